"""Write files and folders under a temporary name, then rename: a reader never sees half a file."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qat.errors import QatError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; on success it replaces `path`, on failure it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextmanager
def new_directory(path: Path) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it into place; never replaces an existing one."""
    if path.exists():
        raise QatError(f"output directory {path} already exists; expected a new path (finished runs are never overwritten)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
