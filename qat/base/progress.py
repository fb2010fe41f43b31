"""Progress a person can watch: tqdm bars when stderr is a terminal; otherwise none (CI, files), where the jobs'
own log lines say how far they are."""
from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

Item = TypeVar("Item")


def interactive() -> bool:
    return sys.stderr.isatty()


def progress(iterable: Iterable[Item] | None = None, *, desc: str, total: int | None = None, unit: str = "batch",
             leave: bool = False, initial: int = 0) -> tqdm:
    """A bar over `iterable` (or one to update by hand); disabled, so silent, when not on a terminal."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, initial=initial, disable=not interactive(),
                dynamic_ncols=True)
