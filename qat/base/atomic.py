"""Write files and folders under a temporary name, then rename: a reader never sees half a file."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qat.base.errors import QatError

# Every temporary name ends so: a folder's leftovers of a killed job are exactly its hidden '*.tmp' entries.
TMP_SUFFIX = ".tmp"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; on success it replaces `path`, on failure it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)   # mkstemp makes it private; the file it becomes should not be
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def strict_json_values(data: Any) -> Any:
    """NaN and infinities as null: JSON has no such numbers, and a reader's strict parser must not fail."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: strict_json_values(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict_json_values(value) for value in data]
    return data


def write_json(path: Path, data: Any) -> None:
    """Strict JSON (no NaN or Infinity), written atomically."""
    text = json.dumps(strict_json_values(json.loads(json.dumps(data, default=str))), indent=2, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextmanager
def new_directory(path: Path) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it into place; never replaces an existing one."""
    if path.exists():
        raise QatError(f"output directory {path} already exists; expected a new path (finished runs are never overwritten)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
