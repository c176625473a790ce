"""The evaluation's tables as a person reads them: figures with their intervals, the best and the tied marked.

Two tables, each at most :data:`TABLE_WIDTH` columns wide: faithfulness
(the perturbation tests, deletion/insertion, ROAD, and how many maps were
constant) and localisation (the mask protocols). Each cell is the figure over
every image, then ``±`` half the width of its 95% bootstrap interval; ``*``
marks the best method of a column and ``=`` each method whose paired
difference with the best has an interval that includes 0 (tied with it).
A third table shows the sanity checks when they ran.
"""

from __future__ import annotations

import io
import math
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

TABLE_WIDTH = 100  # the terminal table's most columns: a split terminal, a CI log

# (title, summary key, figure key, higher is better)
FAITHFULNESS = (
    ("pert+", "perturbation_positive", "auc", False),
    ("pert-", "perturbation_negative", "auc", True),
    ("del", "deletion", "auc", False),
    ("ins", "insertion", "auc", True),
    ("MoRF", "road_morf", "auc", False),
    ("LeRF", "road_lerf", "auc", True),
)
LOCALISATION = (
    ("point", "pointing", "rate", True),
    ("energy", "energy_pointing", "mean", True),
    ("pixacc", "segmentation", "pixel_accuracy", True),
    ("mIoU", "segmentation", "iou", True),
    ("mAP", "segmentation", "ap", True),
)
COLUMNS = FAITHFULNESS + LOCALISATION
LEGEND = ("pert+/pert-: positive/negative perturbation AUC; del/ins: deletion/insertion AUC; MoRF/LeRF: ROAD "
          "AUC; const: constant maps (of all); point: pointing game; energy: energy pointing game; pixacc, mIoU, "
          "mAP: segmentation. ↑ higher is better, ↓ lower is better. Under each figure: ± half the width of its "
          "95% bootstrap interval over images (both ends in eval.json). * the best of a column; = tied with the "
          "best (the 95% interval of their paired difference includes 0). random and centre: a uniform random "
          "map and a centred Gaussian, the chance and centre-bias rows.")


def tables(summary: dict[str, dict[str, Any]], comparisons: dict[str, dict[str, Any]], images: int) -> list[Table]:
    """The faithfulness and localisation tables (those with any figure), then the sanity table."""
    made = []
    for heading, columns, constants in (("faithfulness", FAITHFULNESS, True), ("localisation", LOCALISATION, False)):
        shown = [column for column in columns if any(column[1] in figures for figures in summary.values())]
        if shown:
            made.append(_figures_table(f"{images} images: {heading}", shown, summary, comparisons, constants))
    sanity = _sanity_table(summary)
    if sanity is not None:
        made.append(sanity)
    return made


def table_text(summary: dict[str, dict[str, Any]], comparisons: dict[str, dict[str, Any]], images: int) -> str:
    """The tables and their legend as plain text, :data:`TABLE_WIDTH` columns wide."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=TABLE_WIDTH, highlight=False, color_system=None)
    for table in tables(summary, comparisons, images):
        console.print(table)
    console.print(LEGEND)
    return buffer.getvalue()


def _figures_table(title: str, shown: list[tuple[str, str, str, bool]], summary: dict[str, dict[str, Any]],
                   comparisons: dict[str, dict[str, Any]], constants: bool) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0, 0, 1))
    table.add_column("method", no_wrap=True)
    for heading, _, _, higher in shown:
        table.add_column(f"{heading}\n{'↑' if higher else '↓'}", justify="right", no_wrap=True)
    if constants:
        table.add_column("const\n", justify="right", no_wrap=True)
    for method, figures in summary.items():
        cells = []
        for _, key, figure, _ in shown:
            if key not in figures:
                cells.append("")
                continue
            ranking = comparisons.get(f"{key}.{figure}", {})
            mark = "*" if ranking.get("best") == method else "=" if method in ranking.get("tied_with_best", []) else " "
            value = _formatted(key, figure, figures[key][figure])
            low, high = figures[key].get("intervals", {}).get(figure, (math.nan, math.nan))
            spread = "" if math.isnan(low) else "±" + _formatted(key, figure, (high - low) / 2)
            text = f"{value}{mark}\n{spread} "
            cells.append(f"[bold]{text}[/]" if mark == "*" else text)
        if constants:
            cells.append(f"{figures.get('degenerate', 0)}/{figures.get('lines', 0)}")
        table.add_row(method, *cells)
    return table


def _sanity_table(summary: dict[str, dict[str, Any]]) -> Table | None:
    """Per method: the random-class similarity, and the randomisation curve (top block first)."""
    rows = [(method, figures["sanity"]) for method, figures in summary.items() if "sanity" in figures]
    if not rows:
        return None
    table = Table(title="sanity checks (Spearman correlation with the original map)", title_justify="left",
                  box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0, 0, 1))
    table.add_column("method", no_wrap=True)
    table.add_column("random\nclass", justify="right", no_wrap=True)
    table.add_column("blocks randomised from the top down to block l: l =", no_wrap=False)
    for method, sanity in rows:
        similarity = sanity.get("random_class", math.nan)
        curve = " ".join(f"{point['blocks_randomised_from']}:{point['spearman']:.2f}"
                         for point in sanity.get("randomisation", []))
        table.add_row(method, "n/a" if math.isnan(similarity) else f"{similarity:.2f}", curve)
    return table


def _formatted(key: str, figure: str, value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if key.startswith(("perturbation", "road")):
        return f"{value:.1f}"
    if key in ("deletion", "insertion", "energy_pointing", "segmentation"):
        return f"{value:.3f}"
    return f"{value:.1%}"
