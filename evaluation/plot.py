"""``eval.png``: the perturbation curves and the deletion/insertion curves, one line per method."""

from __future__ import annotations

import io
from typing import Any

from heatmap.evaluation.measures import DELETION_STEPS, PERTURBATION_STEPS

PANELS = (
    ("perturbation_positive", "positive perturbation (lower is better)", "hit rate"),
    ("perturbation_negative", "negative perturbation (higher is better)", "hit rate"),
    ("deletion", "deletion (lower is better)", "target probability"),
    ("insertion", "insertion (higher is better)", "target probability"),
    ("road_morf", "ROAD MoRF (lower is better)", "hit rate"),
    ("road_lerf", "ROAD LeRF (higher is better)", "hit rate"),
    ("sanity", "model randomisation (a faithful map falls)", "Spearman with the original map"),
)
COLUMNS = 4


def curves_png(summary: dict[str, dict[str, Any]], title: str) -> bytes:
    """The mean curves of ``summary`` (from :func:`~heatmap.evaluation.summary.summarise`) as PNG bytes.

    Drawn in memory: the caller writes them (``heatmap.outputs.write_atomically``, never through a link).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    from matplotlib import pyplot

    figure = curves_figure(summary, title)
    picture = io.BytesIO()
    figure.savefig(picture, format="png", dpi=110)
    pyplot.close(figure)
    return picture.getvalue()


def curves_figure(summary: dict[str, dict[str, Any]], title: str) -> Any:
    """The curves as a matplotlib figure: one panel per protocol, one line per method, its 95% band shaded."""
    from matplotlib import pyplot

    panels = [panel for panel in PANELS if any(panel[0] in figures for figures in summary.values())]
    rows = -(-len(panels) // COLUMNS)
    columns = min(COLUMNS, len(panels))
    figure, axes = pyplot.subplots(rows, columns, figsize=(4.2 * columns, 3.8 * rows), squeeze=False)
    for axis, (key, heading, ylabel) in zip(axes.flat, panels, strict=False):
        for method, figures in summary.items():
            if key in figures:
                _draw(axis, key, figures[key], method)
        axis.set_title(heading, fontsize=10)
        axis.set_xlabel("blocks randomised from the top down to block" if key == "sanity"
                        else "fraction of pixels changed")
        axis.set_ylabel(ylabel)
        axis.set_ylim(-1.02 if key == "sanity" else -0.02, 1.02)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, title="method" if key == "sanity" else "method (AUC)", title_fontsize=7)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def _draw(axis: Any, key: str, block: dict[str, Any], method: str) -> None:
    if key == "sanity":
        points = block["randomisation"]
        levels = [point["blocks_randomised_from"] for point in points]
        axis.plot(levels, [point["spearman"] for point in points], marker="o", label=method)
        axis.set_xticks(levels)  # whole blocks
        if not axis.xaxis_inverted():  # the top block first, as the blocks are randomised
            axis.invert_xaxis()
        return
    curve = block["curve"]
    steps = (list(PERTURBATION_STEPS) if key.startswith(("perturbation", "road"))
             else [step / DELETION_STEPS for step in range(len(curve))])
    (line,) = axis.plot(steps, curve, label=f"{method} ({block['auc']:.3g})")
    if "band" in block:
        axis.fill_between(steps, block["band"][0], block["band"][1], color=line.get_color(), alpha=0.12,
                          linewidth=0)
