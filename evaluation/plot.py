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
)


def curves_png(summary: dict[str, dict[str, Any]], title: str) -> bytes:
    """The mean curves of ``summary`` (from :func:`~heatmap.evaluation.evaluate.summarise`) as PNG bytes.

    Drawn in memory: the caller writes them (``heatmap.outputs.write_atomically``, never through a link).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    from matplotlib import pyplot

    panels = [panel for panel in PANELS if any(panel[0] in figures for figures in summary.values())]
    figure, axes = pyplot.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for axis, (key, heading, ylabel) in zip(axes[0], panels, strict=True):
        for method, figures in summary.items():
            if key not in figures:
                continue
            curve = figures[key]["curve"]
            steps = (list(PERTURBATION_STEPS) if key.startswith("perturbation")
                     else [step / DELETION_STEPS for step in range(len(curve))])
            axis.plot(steps, curve, label=f"{method} ({figures[key]['auc']:.3g})")
        axis.set_title(heading, fontsize=10)
        axis.set_xlabel("fraction of pixels changed")
        axis.set_ylabel(ylabel)
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, title="method (AUC)", title_fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    picture = io.BytesIO()
    figure.savefig(picture, format="png", dpi=110)
    pyplot.close(figure)
    return picture.getvalue()
