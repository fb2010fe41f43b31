"""The one exception type whose message is shown to the user as a single line, and the checks that raise it."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class QatError(Exception):
    """Bad input or a failed check: the message names the value and what was expected."""


def check_choice(name: str, value: Any, allowed: tuple[Any, ...] | list[Any]) -> None:
    if value not in allowed:
        raise QatError(f"{name}={value!r} is not valid; expected one of {list(allowed)}")


def check_positive(name: str, value: int | float | None) -> None:
    if value is not None and value <= 0:
        raise QatError(f"{name}={value!r} is not valid; expected a positive number")


@contextmanager
def reported_as_one_line() -> Iterator[None]:
    """What every entry point does with a QatError: one `error:` line on stderr and exit code 2."""
    try:
        yield
    except QatError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
