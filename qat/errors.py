"""The one exception type whose message is shown to the user as a single line."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class QatError(Exception):
    """Bad input or a failed check: the message names the value and what was expected."""


@contextmanager
def reported_as_one_line() -> Iterator[None]:
    """What every entry point does with a QatError: one `error:` line on stderr and exit code 2."""
    try:
        yield
    except QatError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
