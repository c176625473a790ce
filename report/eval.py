"""The evaluation page: which method to believe, and on which images each one fails.

From an ``heatmap eval`` folder: the table of methods x figures (with the
intervals ``eval.json`` records, when it records them), the mean curves
(``eval.png``), and per method and figure the images it did worst on, from
the per-image values of ``eval.jsonl``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from heatmap.report.folders import input_file, json_lines
from heatmap.report.images import PictureStore
from heatmap.report.page import escape, facts

WORST_SHOWN = 5
REFERENCE_ROWS = ("random", "centre")  # chance and the centre bias: no "where it fails" for them
# (heading, summary key, figure key, higher is better, how a value is shown)
FIGURES = (
    ("perturbation+ AUC", "perturbation_positive", "auc", False, "{:.1f}"),
    ("perturbation− AUC", "perturbation_negative", "auc", True, "{:.1f}"),
    ("deletion AUC", "deletion", "auc", False, "{:.3f}"),
    ("insertion AUC", "insertion", "auc", True, "{:.3f}"),
    ("ROAD MoRF AUC", "road_morf", "auc", False, "{:.1f}"),
    ("ROAD LeRF AUC", "road_lerf", "auc", True, "{:.1f}"),
    ("pointing game", "pointing", "rate", True, "{:.1%}"),
    ("energy pointing", "energy_pointing", "mean", True, "{:.3f}"),
    ("pixel accuracy", "segmentation", "pixel_accuracy", True, "{:.3f}"),
    ("mIoU", "segmentation", "iou", True, "{:.3f}"),
    ("mAP", "segmentation", "ap", True, "{:.3f}"),
)


def per_image_value(line: dict[str, Any], key: str, figure: str) -> float | None:
    """One image's value of a figure, from its ``eval.jsonl`` line (None where it was not measured)."""
    if key.startswith("perturbation_"):
        found = (line.get("perturbation") or {}).get(key.split("_", 1)[1], {})
        value = found.get("auc") if isinstance(found, dict) else None
    elif key in ("deletion", "insertion"):
        found = line.get(key)
        value = found.get("auc") if isinstance(found, dict) else None
    elif key.startswith("road_"):
        found = (line.get("road") or {}).get(key.split("_", 1)[1], {})
        value = found.get("auc") if isinstance(found, dict) else None
    elif key == "pointing":
        value = line.get("pointing")
    elif key == "energy_pointing":
        value = line.get("energy_pointing")
    else:
        found = line.get("segmentation")
        value = found.get(figure) if isinstance(found, dict) else None
    if value is None or isinstance(value, (dict, list, str)):
        return None
    number = float(value)
    return None if math.isnan(number) else number


def interval(block: dict[str, Any], figure: str) -> tuple[float, float] | None:
    """The interval ``eval.json`` records for a figure, in the forms it may take; None when it records none.

    ``{"intervals": {figure: [low, high]}}`` or ``{figure: {"low", "high"}}``, ``{figure}_low``/``_high``,
    or a block of one figure with its own ``low``/``high``.
    """
    found: Any = (block.get("intervals") or {}).get(figure) if isinstance(block.get("intervals"), dict) else None
    if found is None and isinstance(block.get(figure), dict):
        found = block[figure]
    if found is None and f"{figure}_low" in block:
        found = [block.get(f"{figure}_low"), block.get(f"{figure}_high")]
    if found is None and "low" in block and "high" in block:
        found = [block["low"], block["high"]]
    if isinstance(found, dict):
        found = [found.get("low"), found.get("high")]
    if isinstance(found, (list, tuple)) and len(found) == 2 and all(isinstance(v, (int, float)) for v in found):
        return float(found[0]), float(found[1])
    return None


def _figure_value(block: dict[str, Any], figure: str) -> float | None:
    value = block.get(figure)
    if isinstance(value, dict):
        value = value.get("value", value.get("mean"))
    return float(value) if isinstance(value, (int, float)) else None


def _shown(style: str, value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else style.format(value)


def table_html(summary: dict[str, dict[str, Any]], comparisons: dict[str, dict[str, Any]] | None = None) -> str:
    """Methods x figures, ``[low, high]`` under a value that has an interval; the best of each column bold
    (and starred), ``=`` after each method tied with it (``eval.json``'s ``comparisons``, when there)."""
    comparisons = comparisons or {}
    shown = [figure for figure in FIGURES if any(figure[1] in figures for figures in summary.values())]
    best = {}
    for heading, key, figure, higher, _ in shown:
        values = [value for figures in summary.values() if key in figures
                  and (value := _figure_value(figures[key], figure)) is not None and not math.isnan(value)]
        if values:
            best[heading] = max(values) if higher else min(values)
    head = "".join(f'<th class="num">{escape(heading)} {"↑" if higher else "↓"}</th>'
                   for heading, _, _, higher, _ in shown)
    constants = any("degenerate" in figures for figures in summary.values())
    rows = []
    for method, figures in summary.items():
        cells = []
        for heading, key, figure, _, style in shown:
            if key not in figures:
                cells.append('<td class="num"></td>')
                continue
            value = _figure_value(figures[key], figure)
            text = escape(_shown(style, value))
            ranking = comparisons.get(f"{key}.{figure}")
            if ranking is not None:
                if ranking.get("best") == method:
                    text = f"<b>{text}*</b>"
                elif method in ranking.get("tied_with_best", []):
                    text += "="
            elif value is not None and best.get(heading) == value:
                text = f"<b>{text}</b>"
            bounds = interval(figures[key], figure)
            if bounds is not None:
                text += f'<br><span class="small muted">[{escape(_shown(style, bounds[0]))}, ' \
                        f"{escape(_shown(style, bounds[1]))}]</span>"
            cells.append(f'<td class="num">{text}</td>')
        if constants:
            cells.append(f'<td class="num">{escape(figures.get("degenerate", ""))}</td>')
        lines = figures.get("lines")
        rows.append(f"<tr><td>{escape(method)}</td><td class=\"num\">{escape(lines if lines is not None else '')}"
                    f"</td>{''.join(cells)}</tr>")
    constant_head = '<th class="num">constant maps</th>' if constants else ""
    legend = ("↑ higher is better, ↓ lower is better; under each figure its 95% bootstrap interval over images; "
              "bold and * the best of each column, = tied with it (the 95% interval of their paired difference "
              "includes 0); random and centre: a uniform random map and a centred Gaussian." if comparisons else
              "↑ higher is better, ↓ lower is better; bold: the best of each column.")
    return (f'<table class="list" id="eval-table"><tr><th>method</th><th class="num">lines</th>{head}'
            f"{constant_head}</tr>{''.join(rows)}</table><p class=\"muted small\">{escape(legend)}</p>"
            f"{sanity_html(summary)}")


def sanity_html(summary: dict[str, dict[str, Any]]) -> str:
    """The sanity checks: per method the random-class similarity and the randomisation curve's points."""
    checked = [(method, figures["sanity"]) for method, figures in summary.items()
               if isinstance(figures.get("sanity"), dict)]
    if not checked:
        return ""
    levels = [point.get("blocks_randomised_from") for point in checked[0][1].get("randomisation", [])]
    head = "".join(f'<th class="num">from block {escape(level)}</th>' for level in levels)
    rows = "".join(
        f"<tr><td>{escape(method)}</td><td class=\"num\">{escape(_shown('{:.2f}', sanity.get('random_class')))}"
        "</td>" + "".join(f'<td class="num">{escape(_shown("{:.2f}", point.get("spearman")))}</td>'
                          for point in sanity.get("randomisation", [])) + "</tr>"
        for method, sanity in checked)
    return ('<h2>Sanity checks</h2><table class="list" id="sanity-table"><tr><th>method</th>'
            f'<th class="num">random class</th>{head}</tr>{rows}</table><p class="muted small">Spearman correlation '
            "of each map with the map of another class (a class-agnostic map gives 1) and with the map of the model "
            "whose blocks are randomised from the top down to the block named (a map that follows the model "
            "falls).</p>")


def worst_html(lines: list[dict[str, Any]], folder: Path, store: PictureStore) -> str:
    """Per method, per figure, the images it did worst on, with their thumbnails where the files exist."""
    methods = [method for method in dict.fromkeys(str(line.get("method")) for line in lines)
               if method not in REFERENCE_ROWS]
    parts = []
    for method in methods:
        own = [line for line in lines if str(line.get("method")) == method]
        sections = []
        for heading, key, figure, higher, style in FIGURES:
            if key == "segmentation" and figure != "iou":  # one segmentation figure is enough to find the misses
                continue
            valued = [(value, line) for line in own if (value := per_image_value(line, key, figure)) is not None]
            if not valued:
                continue
            valued.sort(key=lambda pair: pair[0] if higher else -pair[0])
            worst = valued[:WORST_SHOWN]
            cards = "".join(_card(line, value, key, style, folder, store) for value, line in worst)
            sections.append(f'<h3>{escape(heading)} <span class="muted small">({"lowest" if higher else "highest"} '
                            f"of {len(valued)})</span></h3><div>{cards}</div>")
        if sections:
            parts.append(f'<section class="worst" data-method="{escape(method)}"><h2>Where {escape(method)} does '
                         f"worst</h2>{''.join(sections)}</section>")
    return "".join(parts)


def _card(line: dict[str, Any], value: float, key: str, style: str, folder: Path, store: PictureStore) -> str:
    name = str(line.get("input"))
    path = input_file(name, folder)
    target = " ".join(str(part) for part in (line.get("target"), line.get("label")) if part is not None)
    shown = ("hit" if value else "miss") if key == "pointing" else _shown(style, value)
    thumbnail = store.thumbnail(path)
    picture = (f'<img class="thumb" src="{escape(thumbnail)}" alt="{escape(name)}" loading="lazy" '
               f'data-full="{escape(store.link(path) or thumbnail)}" data-caption="{escape(name)}">'
               if thumbnail else "")
    return (f'<div class="card">{picture}<div class="name" title="{escape(name)}">{escape(Path(name).name)}</div>'
            f'<div class="score">{escape(target)} · {escape(shown)}</div></div>')


def eval_section(folder: Path, store: PictureStore) -> str:
    """The evaluation part of a page, from ``folder``'s ``eval.json``, ``eval.jsonl`` and ``eval.png``."""
    report = json.loads((folder / "eval.json").read_text(encoding="utf-8"))
    settings = report.get("settings", {})
    inputs = settings.get("inputs")
    described = facts([
        ("folder", folder), ("model", settings.get("model")), ("images", report.get("images")),
        ("target", settings.get("target")), ("protocols", ", ".join(settings.get("protocols") or [])),
        ("inputs", json.dumps(inputs) if isinstance(inputs, dict) else ", ".join(map(str, inputs or [])) or None),
        ("texts", ", ".join(settings.get("texts") or []) or None), ("labels", settings.get("labels")),
        ("masks", settings.get("masks")), ("tolerance", settings.get("tolerance"))])
    failed = report.get("failed") or []
    failures = (f'<h3 class="problems">{len(failed)} image(s) failed</h3><ul class="failures">'
                + "".join(f"<li>{escape(message)}</li>" for message in failed) + "</ul>") if failed else ""
    curves = store.link(folder / "eval.png")
    curves_html = (f'<h2>Mean curves</h2><img class="curves" id="curves" src="{escape(curves)}" '
                   'alt="the mean perturbation, deletion and insertion curves">' if curves else "")
    summary = report.get("methods") or {}
    table = table_html(summary, report.get("comparisons") if isinstance(report.get("comparisons"), dict) else None)
    return (f"<h2>{escape(folder.name or folder)}</h2>{described}{failures}<h2>Figures</h2>{table}"
            f"{curves_html}{worst_html(json_lines(folder / 'eval.jsonl'), folder, store)}")


__all__ = ["eval_section", "interval", "per_image_value", "sanity_html", "table_html", "worst_html"]
