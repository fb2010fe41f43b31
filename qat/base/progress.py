"""Progress a person can watch: tqdm bars when stderr is a terminal; otherwise (CI, files) one log line when a
pass ends, so that a job's log says how far it is and where the minutes went."""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

Item = TypeVar("Item")
log = logging.getLogger("qat.progress")


def interactive() -> bool:
    return sys.stderr.isatty()


class Progress(tqdm):
    """tqdm that, when disabled (no terminal) and asked to, logs '<desc>: <n> <unit>s in <s> s' once its
    iterable is done."""

    def __init__(self, iterable: Iterable | None = None, *, report: bool = False, **kwargs) -> None:
        super().__init__(iterable, **kwargs)
        # a disabled tqdm keeps nothing of its arguments
        self.report, self.iterable = report and self.disable, iterable
        self.label, self.what = kwargs.get("desc", ""), kwargs.get("unit", "it")

    def __iter__(self) -> Iterator:
        if not self.report:
            yield from super().__iter__()
            return
        start, count = time.perf_counter(), 0
        for count, item in enumerate(self.iterable, 1):
            yield item
        if count:
            plural = self.what + ("es" if self.what.endswith(("ch", "sh", "s")) else "s")
            log.info("%s: %d %s in %.1f s", self.label, count, plural if count > 1 else self.what,
                     time.perf_counter() - start)


def progress(iterable: Iterable[Item] | None = None, *, desc: str, total: int | None = None, unit: str = "batch",
             leave: bool = False, initial: int = 0, report: bool = True) -> tqdm:
    """A bar over `iterable` (or one to update by hand); when not on a terminal, no bar, and with `report` a log
    line at the end of the iterable."""
    return Progress(iterable, desc=desc, total=total, unit=unit, leave=leave, initial=initial,
                    disable=not interactive(), dynamic_ncols=True, report=report)
