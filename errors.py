"""The user-error family: mistakes a user can fix, each with a one-line message.

Library code raises these and nothing else for what the user must fix; a bug
is a plain Python exception. Exit codes belong to the CLI
(``heatmap.cli.app.EXIT_CODES``), never to the library.
"""


class HeatmapError(Exception):
    """A user error: bad input, a missing model, a failed file.

    The message says what went wrong and what to do about it, in one line.
    """


class UsageError(HeatmapError):
    """A bad option value found after parsing (a target out of range, say)."""


class UnsupportedModelError(HeatmapError):
    """A model (or one of its operations) a method cannot explain; the message names it and what works."""
