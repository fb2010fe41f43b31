"""The one exception type whose message is shown to the user as a single line, and the checks that raise it."""
from __future__ import annotations

import errno
import os
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


def check_count(name: str, value: Any, zero_means: str) -> None:
    """A whole number >= 0 (not a bool), where 0 switches something off: `zero_means` says what."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise QatError(f"{name}={value!r} is not valid; expected a count >= 0 (0: {zero_means})")


def disk_error(error: OSError) -> QatError | None:
    """A full disk or an unwritable file met while writing, as a QatError; None for any other OSError."""
    where = error.filename or "the run folder"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return QatError(f"no space left on the device writing {where}; expected free disk space (nothing finished was "
                        "overwritten: every file is written under a temporary name first)")
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return QatError(f"cannot write {where} ({os.strerror(error.errno)}); expected a writable run folder")
    return None


@contextmanager
def reported_as_one_line() -> Iterator[None]:
    """What every entry point does with a QatError (and a full or read-only disk): one `error:` line on stderr and
    exit code 2."""
    try:
        yield
    except QatError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:
        mapped = disk_error(error)
        if mapped is None:
            raise
        print(f"error: {mapped}", file=sys.stderr)
        sys.exit(2)
