"""`python -m qat.train`: the recovery job, composed by Hydra from conf/."""
from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from qat.config import to_run_config
from qat.errors import reported_as_one_line


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    with reported_as_one_line():
        config = to_run_config(cfg)
        from qat.pipeline import run_pipeline  # heavy imports (torch, IPEX) only after the config is valid

        run_dir = Path(HydraConfig.get().runtime.output_dir)
        run_pipeline(config, run_dir)
        print(f"report: {run_dir / 'report.md'}")


if __name__ == "__main__":
    main()
