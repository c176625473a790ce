"""The user-error family: mistakes a user can fix, each with a one-line message."""


class HeatmapError(Exception):
    """A user error: bad input, a missing model, a failed file.

    The message says what went wrong and what to do about it, in one line.
    The CLI prints it without a traceback (unless ``--debug``) and exits with
    ``exit_code``.
    """

    exit_code = 1


class UsageError(HeatmapError):
    """A bad option value found after parsing (a target out of range, say): exit 2."""

    exit_code = 2
