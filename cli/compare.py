"""``heatmap compare``: two result folders, entry by entry, for CI.

The metrics are in ``heatmap.compare.metrics``, the JUnit XML and the difference
pictures in ``heatmap.compare.reports``, the HTML page in ``heatmap.report``; this reads the user's options,
prints the worst entries and returns the exit code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from heatmap.cli import console
from heatmap.cli.console import Output
from heatmap.compare.metrics import EntryComparison, FolderComparison, Thresholds

WORST_ROWS = 20


@dataclass
class CompareRequest:
    """What ``heatmap compare`` was asked."""

    baseline: Path
    candidate: Path
    thresholds: Thresholds
    report: Path | None = None
    diff_dir: Path | None = None
    output: Output = "normal"
    html: Path | None = None  # the comparison's page (``--html``)


def run_compare(request: CompareRequest) -> int:
    """Compare, report, and return 0 when every entry passes, else 1."""
    from heatmap.compare.metrics import compare_folders
    from heatmap.compare.reports import junit_xml, write_difference_pictures
    from heatmap.errors import HeatmapError
    from heatmap.outputs import write_atomically

    try:
        comparison = compare_folders(request.baseline, request.candidate, request.thresholds)
    except FileNotFoundError as error:
        raise HeatmapError(str(error)) from None
    for side, lines in comparison.broken_lines.items():
        if lines and request.output != "json":
            console.stderr.print(f"[yellow]note:[/] {side} manifest: {len(lines)} line(s) that are not entries "
                                 f"left out (line {', '.join(map(str, lines))})", highlight=False)
    if request.report is not None:
        try:
            request.report.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(request.report, junit_xml(comparison))
        except OSError as error:
            raise HeatmapError(f"cannot write the report {request.report}: {error.strerror or error}; "
                               "choose another --report path") from None
    try:
        pictures = (write_difference_pictures(comparison, request.diff_dir) if request.diff_dir is not None
                    else [])
    except OSError as error:  # a full disk, or a picture's name that is a symbolic link (never written through)
        raise HeatmapError(f"cannot write the difference pictures in {request.diff_dir}: "
                           f"{error.strerror or error}; choose another --diff-dir") from None
    page = _write_page(comparison, request.html) if request.html is not None else None
    if request.output == "json":
        summary = _summary(comparison, pictures)
        if page is not None:
            summary["html"] = str(page)
        console.say_json(json.dumps(summary))
    elif request.output == "normal":
        _print_table(comparison)
        if pictures:
            console.stderr.print(f"{len(pictures)} difference picture(s) in {request.diff_dir}")
    if page is not None and request.output == "normal":
        console.stderr.print(f"report: {page}", highlight=False, markup=False, soft_wrap=True)
    if not comparison.passed and request.output != "json":
        missing = sum(entry.candidate is None for entry in comparison.entries)
        extra = sum(entry.baseline is None for entry in comparison.entries)
        console.say_error(f"{len(comparison.failed)} of {len(comparison.entries)} entries differ "
                          f"({missing} missing, {extra} extra) beyond max-diff {request.thresholds.max_diff:g}, "
                          f"min-corr {request.thresholds.min_corr:g}, min-top-iou {request.thresholds.min_top_iou:g}")
        if comparison.by_configuration and any(entry.baseline is None or entry.candidate is None
                                               for entry in comparison.entries):
            console.say_error(_configurations_note(comparison))
        if comparison.nothing_paired:
            console.say_error("no entry of the baseline has a partner in the candidate: entries pair by input "
                              "path as given, model, method, options and target"
                              + (", weights and precision" if comparison.by_configuration else "")
                              + "; run both from the same folder with the same method and options")
    return 0 if comparison.passed else 1


def _write_page(comparison: FolderComparison, path: Path) -> Path:
    """The comparison's HTML page at ``path`` (``--html``).

    Raises:
        HeatmapError: when it cannot be written.
    """
    from heatmap.errors import HeatmapError
    from heatmap.report import write_compare_report

    try:
        return write_compare_report(comparison, path)
    except OSError as error:
        raise HeatmapError(f"cannot write the page {path}: {error.strerror or error}; choose another --html path"
                           ) from None


def _configurations_note(comparison: FolderComparison) -> str:
    """Why entries went unpaired when a folder holds maps of several configurations."""
    from heatmap.compare.metrics import CONFIGURATION_FIELDS, shown_value

    def spelled(found: list[tuple[str, ...]]) -> str:
        return "; ".join(", ".join(f"{name} {shown_value(name, value)}"
                                   for name, value in zip(CONFIGURATION_FIELDS, one, strict=True)) for one in found)

    return ("entries pair only with the same weights and precision when a folder holds runs of several: "
            f"baseline: {spelled(comparison.configurations['baseline'])}; "
            f"candidate: {spelled(comparison.configurations['candidate'])}")


def _summary(comparison: FolderComparison, pictures: list[Path]) -> dict[str, Any]:
    from heatmap.compare.metrics import CONFIGURATION_FIELDS

    entries = []
    for entry in comparison.worst_first():
        metrics = entry.metrics
        entries.append({"entry": entry.name, "passed": entry.passed, "problems": entry.problems,
                        "max_diff": metrics.max_diff if metrics else None, "corr": metrics.corr if metrics else None,
                        "top_iou": metrics.top_iou if metrics else None, "score_change": entry.score_change,
                        **{name: entry.configuration_of(name) for name in CONFIGURATION_FIELDS}})
    pairing = ["input", "model", "method", "options", "target"]
    return {"baseline": str(comparison.baseline_dir), "candidate": str(comparison.candidate_dir),
            "pairing": pairing + (list(CONFIGURATION_FIELDS) if comparison.by_configuration else []),
            "entries": len(comparison.entries), "failed": len(comparison.failed), "passed": comparison.passed,
            "broken_manifest_lines": comparison.broken_lines, "nothing_paired": comparison.nothing_paired,
            "difference_pictures": [str(path) for path in pictures], "results": entries}


def _configuration_cell(entry: EntryComparison, name: str) -> str:
    """A configuration field of a row: the entry's value, or ``baseline -> candidate`` where they differ."""
    from heatmap.compare.metrics import shown_value

    sides = entry.configuration_of(name)
    if entry.baseline is not None and entry.candidate is not None and sides["baseline"] != sides["candidate"]:
        return f"{shown_value(name, sides['baseline'])} -> {shown_value(name, sides['candidate'])}"
    return shown_value(name, sides["baseline"] if entry.baseline is not None else sides["candidate"])


def _print_table(comparison: FolderComparison) -> None:
    from heatmap.outputs import entry_target

    worst = comparison.worst_first()
    table = Table(title=f"{len(comparison.entries) - len(comparison.failed)} of {len(comparison.entries)} "
                        f"entries agree", title_justify="left")
    # weights and precision are shown where they tell entries (or the two sides of a pair) apart
    shown = comparison.differing_fields
    for column in ("input", "method", "target", *shown, "max-diff", "corr", "top-iou", "score change", "result"):
        table.add_column(column, justify="right" if column in ("max-diff", "corr", "top-iou", "score change")
                         else "left", overflow="fold")
    for entry in worst[:WORST_ROWS]:
        metrics = entry.metrics
        cells = ([f"{metrics.max_diff:.2g}", f"{metrics.corr:.6f}", f"{metrics.top_iou:.2f}"] if metrics
                 else ["-", "-", "-"])
        change = f"{entry.score_change:+.3g}" if entry.score_change is not None else "-"
        result = "[green]ok[/]" if entry.passed else f"[red]{escape('; '.join(entry.problems))}[/]"
        source = entry.baseline or entry.candidate or {}
        target = " ".join(str(part) for part in (entry_target(source), source.get("label")) if part is not None)
        table.add_row(escape(str(source.get("input"))), str(source.get("method")), escape(target),
                      *(escape(_configuration_cell(entry, name)) for name in shown), *cells, change, result)
    if len(worst) > WORST_ROWS:
        table.caption = f"the {WORST_ROWS} worst of {len(worst)}"
    console.stdout.print(table)
