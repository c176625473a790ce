"""The one exception type for mistakes a user can fix."""


class HeatmapError(Exception):
    """A user error: bad input, a missing model, an impossible option.

    The message says what went wrong and what to do about it, in one line.
    The CLI prints it without a traceback (unless ``--debug``) and exits 1.
    """
