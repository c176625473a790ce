"""Static HTML reports: one self-contained page for runs, a comparison or an evaluation.

Pages are built from output folders (manifest, ``runs.jsonl``, ``eval.json``
and the files they name), never from tensors, and written atomically. The
pictures are linked relative to the page (thumbnails cached beside it in
``<page>_files/``) or, with ``embed``, inlined: one portable file.

- :func:`build_report`: folders of any kind -> one page (``heatmap report``);
- :func:`write_run_report`, :func:`write_eval_report`: ``<folder>/report.html``
  at the end of a command;
- :func:`write_compare_report`: a comparison's page (``heatmap compare --html``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from heatmap.errors import UsageError
from heatmap.report.folders import RunFolder, folder_kind
from heatmap.report.images import PictureStore
from heatmap.report.page import document

if TYPE_CHECKING:
    from heatmap.compare.metrics import FolderComparison

REPORT_NAME = "report.html"
PAGE_SUFFIXES = (".html", ".htm")


def default_page(folders: list[Path]) -> Path:
    """``DIR/report.html`` for one folder.

    Raises:
        UsageError: for several folders (no folder is more theirs than another).
    """
    if len(folders) != 1:
        raise UsageError(f"{len(folders)} folders make one page: say where it goes with -o FILE.html")
    return Path(folders[0]) / REPORT_NAME


def check_page_path(page: Path) -> None:
    """Refuse a page path that would overwrite anything but a page.

    Raises:
        UsageError: ``page`` is a folder, or not an ``.html`` file.
    """
    if page.is_dir():
        raise UsageError(f"-o {page} is a folder; give the page's file name (e.g. {page / REPORT_NAME})")
    if page.suffix.lower() not in PAGE_SUFFIXES:
        raise UsageError(f"-o {page}: a report is an .html file; give a name ending in .html")


def build_report(folders: list[Path], page: Path | None = None, embed: bool = False) -> Path:
    """One page of ``folders``: runs side by side in one grid, then each evaluation.

    Args:
        folders: run folders (``manifest.jsonl``) and evaluation folders (``eval.json``), in any mix.
        page: where the page goes; default ``DIR/report.html`` for one folder.
        embed: pictures inline as data URIs (one portable file) instead of linked.

    Returns:
        the page written.

    Raises:
        UsageError: for a folder of neither kind, several folders without ``page``, or a page path that
            is not an ``.html`` file.
    """
    from heatmap.report.eval import eval_section
    from heatmap.report.run import run_section

    folders = [Path(folder) for folder in folders]
    if not folders:
        raise UsageError("give at least one folder: a heatmap run's or a heatmap eval's output folder")
    kinds = [folder_kind(folder) for folder in folders]
    page = Path(page) if page is not None else default_page(folders)
    check_page_path(page)
    store = PictureStore(page, embed)
    runs = [RunFolder.read(folder) for folder, kind in zip(folders, kinds, strict=True) if kind == "run"]
    body, scripts = "", list[str]()
    if runs:
        body, scripts = run_section(runs, store)
    for folder, kind in zip(folders, kinds, strict=True):
        if kind == "eval":
            body += eval_section(folder, store)
    title = ("heatmap run" if kinds.count("run") == len(kinds) else
             "heatmap evaluation" if kinds.count("eval") == len(kinds) else "heatmap report")
    subtitle = ", ".join(str(folder) for folder in folders)
    return _write(page, document(title, subtitle, body, scripts), store)


def build_compare_report(baseline: Path, candidate: Path, page: Path, embed: bool = False) -> Path:
    """The comparison page of two run folders with the default thresholds (``heatmap report --compare``).

    Raises:
        UsageError: for a folder without a manifest.
    """
    from heatmap.compare.metrics import compare_folders

    for folder in (baseline, candidate):
        if folder_kind(folder) != "run":
            raise UsageError(f"{folder} is not a run folder (no manifest.jsonl); --compare takes two run folders")
    return write_compare_report(compare_folders(baseline, candidate), page, embed)


def write_compare_report(comparison: FolderComparison, path: Path, embed: bool = False) -> Path:
    """Write the page of ``comparison`` at ``path``; return it.

    Raises:
        UsageError: ``path`` is a folder or not an ``.html`` file.
    """
    from heatmap.report.compare import compare_body

    page = Path(path)
    check_page_path(page)
    store = PictureStore(page, embed)
    subtitle = f"baseline {comparison.baseline_dir} · candidate {comparison.candidate_dir}"
    return _write(page, document("heatmap compare", subtitle, compare_body(comparison, store)), store)


def write_run_report(folder: Path, embed: bool = False) -> Path:
    """``<folder>/report.html`` of a run folder; return its path."""
    return build_report([Path(folder)], Path(folder) / REPORT_NAME, embed)


def write_eval_report(folder: Path, embed: bool = False) -> Path:
    """``<folder>/report.html`` of an evaluation folder; return its path."""
    return build_report([Path(folder)], Path(folder) / REPORT_NAME, embed)


def _write(page: Path, html: str, store: PictureStore) -> Path:
    from heatmap.outputs import write_atomically

    page.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(page, html.encode("utf-8"))
    store.prune()
    return page


__all__ = ["REPORT_NAME", "build_compare_report", "build_report", "default_page", "write_compare_report",
           "write_eval_report", "write_run_report"]
