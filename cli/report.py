"""``heatmap report``: one static HTML page of run folders, evaluation folders, or a comparison.

The page is built by ``heatmap.report`` from the folders' files; this reads
the options, maps errors to exit codes (``heatmap.cli.app.exit_with``) and
says where the page is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from heatmap.cli.options import Debug, Quiet

OUTPUTS = "Outputs and pictures"  # the help group of the explaining commands' output options


def report(
    folders: Annotated[list[Path], typer.Argument(
        exists=True, file_okay=False, metavar="DIR",
        help="Output folders of heatmap runs (manifest.jsonl) or of heatmap eval (eval.json); several runs "
             "are shown side by side.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", dir_okay=False, metavar="FILE.html", rich_help_panel=OUTPUTS,
        help="Where the page goes; needed for several folders.", show_default="DIR/report.html")] = None,
    embed: Annotated[bool, typer.Option(
        "--embed", rich_help_panel=OUTPUTS,
        help="Put every picture inside the page: one portable file (larger), nothing else written.")
    ] = False,
    compare: Annotated[bool, typer.Option(
        "--compare", rich_help_panel=OUTPUTS,
        help="Two run folders, BASELINE CANDIDATE: the page of heatmap compare with its default thresholds.")] = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """One static HTML page (no network) of run folders, evaluation folders, or a comparison of two runs.

    Runs: a grid of inputs x methods and targets, filterable and sortable; click a picture to enlarge it.
    Evaluations: the figures, the curves and each method's worst images. Thumbnails are cached beside the
    page in FILE_files/ (none with --embed).
    """
    from heatmap.cli.app import exit_with

    def run() -> int:
        page = make_page(folders, out, embed, compare)
        if not quiet:
            from heatmap.cli import console

            console.stderr.print(f"report: {page}", highlight=False, markup=False, soft_wrap=True)
        return 0

    exit_with(run, debug)


def make_page(folders: list[Path], out: Path | None, embed: bool, compare: bool) -> Path:
    """The page asked for, written; its path.

    Raises:
        UsageError: for --compare with other than two folders (or without -o), and see
            :func:`heatmap.report.build_report`.
    """
    from heatmap.errors import UsageError
    from heatmap.report import build_compare_report, build_report

    if compare:
        if len(folders) != 2:
            raise UsageError(f"--compare takes two run folders, BASELINE CANDIDATE; got {len(folders)}")
        if out is None:
            raise UsageError("--compare: say where the page goes with -o FILE.html")
        return build_compare_report(folders[0], folders[1], out, embed)
    return build_report(folders, out, embed)


__all__ = ["make_page", "report"]
