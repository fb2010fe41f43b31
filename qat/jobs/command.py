"""What the three command-line jobs share: Hydra composes conf/<name>.yaml, the schema validates it, the run
folder is checked and claimed before anything is written, the job runs in-process, and a QatError (or a bad
command line) becomes one `error:` line with exit code 2."""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from qat.config import to_run_config
from qat.base.errors import QatError, reported_as_one_line
from qat.base.settings import Settings
from qat.jobs.kinds import JobKind, job_help
from qat.jobs.run_folder import (
    RunLock,
    attach_log,
    check_run_folder,
    check_writable,
    remove_leftovers,
    undo_fresh_start,
    write_record,
)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
Config = TypeVar("Config")


def _is_main_process() -> bool:
    """The process that owns the run folder; the others of one accelerate launch share it on purpose."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def _compose(config_name: str, overrides: Sequence[str], hydra_config: bool = False) -> DictConfig:
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=hydra_config)
    except (HydraException, OmegaConfBaseException) as error:
        raise QatError(f"invalid command line: {_one_line(str(error))}") from None


def _one_line(message: str) -> str:
    """Hydra's first line, and the options it lists, if any ('Available options in ...' then one per line)."""
    lines = message.strip().splitlines()
    listed = next((i for i, line in enumerate(lines) if line.startswith("Available options")), None)
    options = []
    for line in lines[listed + 1:] if listed is not None else []:
        if not line.startswith("\t"):
            break
        options.append(line.strip())
    hint = next((line.strip() for line in lines[1:] if line.startswith("To append")), "")
    return lines[0] + (f"; expected one of {options}" if options else "") + (f" ({hint})" if hint else "")


def _precheck(config_name: str, schema: type) -> bool:
    """What must fail before Hydra makes the run folder: a bad override or value, or a folder that cannot be made.
    Command lines with Hydra's own flags (--cfg, --multirun, --config-dir, ...) go to Hydra as they are. Returns
    whether the run folder exists already (a folder this run makes is removed again if the run is refused)."""
    arguments = sys.argv[1:]
    if any(argument.startswith("-") for argument in arguments):
        return True
    cfg = _compose(config_name, arguments, hydra_config=True)
    run_dir = Path(OmegaConf.select(cfg, "hydra.run.dir")).absolute()
    with open_dict(cfg):
        del cfg["hydra"]
    to_run_config(cfg, schema)
    check_writable(run_dir)
    return run_dir.exists()


@contextmanager
def _claimed(run_dir: Path, kind: JobKind, config: Any, cfg: DictConfig, resume: bool,
             made_here: bool) -> Iterator[None]:
    """Check the folder, lock it, clear a killed job's leftovers, record a fresh run; release at the end. A fresh
    run that fails before any output takes its record back, and the folder too if this run made it."""
    if not _is_main_process():
        yield
        return
    settings = Settings.of(config)
    continues = check_run_folder(run_dir, kind, settings, resume)
    lock = RunLock(run_dir)
    handler, failed = None, True
    try:
        remove_leftovers(run_dir)
        if not continues:
            write_record(run_dir, kind, settings, cfg, list(HydraConfig.get().overrides.task))
        handler = attach_log(run_dir, kind.name)
        yield
        failed = False
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
        if failed and not continues:
            undo_fresh_start(run_dir, kind.name)
        lock.release()
        if failed and made_here and not any(run_dir.iterdir()):
            run_dir.rmdir()


def run_job(kind: JobKind, resumes: Callable[[Any], bool] = lambda config: False) -> tuple[Any, Path]:
    """`python -m qat.<job> [overrides]`: returns the job's result and its run folder."""
    if any(argument in ("--help", "-h") for argument in sys.argv[1:]):
        print(job_help(kind, CONF_DIR))
        sys.exit(0)
    with reported_as_one_line():
        existed = _precheck(kind.name, kind.schema)
    outcome: dict[str, Any] = {}

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=kind.name)
    def main(cfg: DictConfig) -> None:
        with reported_as_one_line():
            config = to_run_config(cfg, kind.schema)
            run_dir = Path(HydraConfig.get().runtime.output_dir)
            with _claimed(run_dir, kind, config, cfg, resumes(config), made_here=not existed):
                outcome["result"] = kind.run(config, run_dir), run_dir

    main()
    return outcome["result"]


def job_config(config_name: str, schema: type[Config], overrides: Sequence[str] = ()) -> Config:
    """The validated config a job would run with, composed in-process (tests, notebooks)."""
    return to_run_config(_compose(config_name, overrides), schema)
