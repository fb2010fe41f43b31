"""What the three command-line jobs share: Hydra composes conf/<name>.yaml, the schema validates it, the job
runs in-process on its run folder, and a QatError becomes one `error:` line with exit code 2."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from qat.config import to_run_config
from qat.errors import reported_as_one_line

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
Config = TypeVar("Config")
Result = TypeVar("Result")


def run_job(config_name: str, schema: type[Config], job: Callable[[Config, Path], Result]) -> tuple[Result, Path]:
    """`python -m qat.<job> [overrides]`: returns the job's result and its run folder."""
    outcome: dict[str, Any] = {}

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def main(cfg: DictConfig) -> None:
        with reported_as_one_line():
            run_dir = Path(HydraConfig.get().runtime.output_dir)
            outcome["result"] = job(to_run_config(cfg, schema), run_dir), run_dir

    main()
    return outcome["result"]


def job_config(config_name: str, schema: type[Config], overrides: Sequence[str] = ()) -> Config:
    """The validated config a job would run with, composed in-process (tests, notebooks)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_run_config(compose(config_name=config_name, overrides=list(overrides)), schema)
