"""The one exception type whose message is shown to the user as a single line."""


class QatError(Exception):
    """Bad input or a failed check: the message names the value and what was expected."""
