"""The two consoles: results to stdout, progress and diagnostics to stderr."""

from typing import Literal

from rich.console import Console
from rich.markup import escape

stdout = Console()
stderr = Console(stderr=True)

Output = Literal["normal", "quiet", "json"]
"""What a command prints: progress and tables; only errors (``--quiet``); or a JSON summary on stdout (``--json``)."""


def say_error(message: str) -> None:
    """One line on stderr, never wrapped, never read as markup."""
    stderr.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)


def say_failed(message: str) -> None:
    """One line on stderr for one input that failed."""
    stderr.print(f"[red]failed:[/] {escape(message)}", soft_wrap=True, highlight=False)


def say_json(text: str) -> None:
    """One line of JSON on stdout, exactly as given (no markup, highlighting or wrapping)."""
    stdout.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)
