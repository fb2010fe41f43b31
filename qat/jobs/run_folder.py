"""A run folder nothing can corrupt. Before a job writes anything: the folder must be writable, a finished run is
never touched, an unfinished one continues only as a resume with the settings it was started with, and one job
at a time holds it (a lock file with the process id). Then the leftovers of a killed job are removed and the
job's record (its settings, its Hydra config and overrides, its log) is written."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from qat.base.atomic import TMP_SUFFIX, write_json, write_text
from qat.base.errors import QatError
from qat.base.settings import SETTINGS_FILE, Settings
from qat.jobs.kinds import JobKind

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"
TENSORBOARD_DIR = "tensorboard"   # events of a run that failed before any output say nothing
RECORD_DIR = ".hydra"


def check_writable(run_dir: Path) -> None:
    """The folder can be made and written: it is no file, and its nearest existing ancestor is writable."""
    if run_dir.exists() and not run_dir.is_dir():
        raise QatError(f"hydra.run.dir={str(run_dir)!r} is a file; expected a folder (a new one, or a run to resume)")
    existing = next(p for p in [run_dir, *run_dir.parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise QatError(f"hydra.run.dir={str(run_dir)!r} cannot be written ({str(existing)!r} is read-only or not a "
                       "folder); expected a writable location")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """`<run>/.lock`, created atomically (O_EXCL) with this process id; a lock whose process is gone is stale."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale(run_dir)
                continue
            with os.fdopen(descriptor, "w") as handle:
                handle.write(str(os.getpid()))
            return
        raise QatError(f"run folder {str(run_dir)!r} was locked again while taking over a stale lock; expected one job "
                       "per folder")

    def _take_over_if_stale(self, run_dir: Path) -> None:
        try:
            pid = int(self.path.read_text().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if pid and pid != os.getpid() and _alive(pid):
            raise QatError(f"run folder {str(run_dir)!r} is in use by process {pid} (lock {self.path.name}); expected "
                           "one job per folder: wait for it to end, or choose another hydra.run.dir")
        log.warning("run folder %s: taking over the stale lock of process %s, which no longer runs", run_dir, pid or "?")
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.path.is_file() and self.path.read_text().strip() == str(os.getpid()):
            self.path.unlink()


def _recorded(run_dir: Path) -> dict[str, Any] | None:
    """What a run recorded at its start: {'job': name, 'settings': {...}}, or None."""
    try:
        return json.loads((run_dir / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return None


def _state(run_dir: Path, kind: JobKind) -> str:
    if not run_dir.is_dir():
        return "new"
    contents = [p for p in run_dir.iterdir() if p.name != LOCK_FILE and not p.name.endswith(TMP_SUFFIX)]
    if not contents:
        return "new"
    recorded = _recorded(run_dir)
    if recorded is None or recorded.get("job") != kind.name:
        return "finished" if (run_dir / kind.finished_marker).exists() else "foreign"
    return "finished" if (run_dir / kind.finished_marker).exists() else "started"


def check_run_folder(run_dir: Path, kind: JobKind, settings: Settings, resume: bool) -> bool:
    """Refuse a folder this job must not write to; True if the job continues a run started there."""
    check_writable(run_dir)
    state = _state(run_dir, kind)
    if state == "finished":
        raise QatError(f"run folder {str(run_dir)!r} holds a finished run ({kind.finished_marker}); expected a new "
                       "hydra.run.dir (finished runs are never overwritten)")
    if state == "foreign":
        raise QatError(f"run folder {str(run_dir)!r} is not empty and holds no qat {kind.name} run; expected a new or "
                       "empty folder")
    if state == "new":
        return False
    if not (kind.resumable and resume):
        how = "train.resume=auto to continue it, or " if kind.resumable else ""
        raise QatError(f"run folder {str(run_dir)!r} holds a {kind.name} run that did not finish; expected {how}a new "
                       "hydra.run.dir")
    changed = settings.changed_from(Settings(_recorded(run_dir)["settings"]))
    if changed:
        raise QatError(f"run folder {str(run_dir)!r} was started with {changed}; expected the same settings to resume "
                       "(or a new hydra.run.dir to change them)")
    return True


def remove_leftovers(run_dir: Path) -> None:
    """Temporary files and folders of a killed job (atomic writes that never reached their rename)."""
    for path in sorted(run_dir.rglob(f".*{TMP_SUFFIX}"), key=lambda p: len(p.parts), reverse=True):
        log.info("removing %s, left by a job that did not finish", path)
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def write_record(run_dir: Path, kind: JobKind, settings: Settings, config: DictConfig, overrides: list[str]) -> None:
    """What a fresh run records once: its job and settings (a resume is checked against them), config, overrides."""
    write_json(run_dir / SETTINGS_FILE, {"job": kind.name, "settings": settings.values})
    write_text(run_dir / RECORD_DIR / "config.yaml", OmegaConf.to_yaml(config))
    write_text(run_dir / RECORD_DIR / "overrides.yaml", OmegaConf.to_yaml(overrides))


def undo_fresh_start(run_dir: Path, job_name: str) -> None:
    """A fresh run that failed before writing any output takes its record back, so that a corrected rerun may use
    the same folder. Once an output exists (a PTQ artifact, a checkpoint, a report), everything stays."""
    record = {SETTINGS_FILE, RECORD_DIR, f"{job_name}.log", TENSORBOARD_DIR}
    if any(p.name not in record | {LOCK_FILE} for p in run_dir.iterdir()):
        return
    for name in record:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def attach_log(run_dir: Path, job_name: str) -> logging.Handler:
    """The job's log file (appended to by a resume), opened only once the folder is known to be this job's."""
    handler = logging.FileHandler(run_dir / f"{job_name}.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler
