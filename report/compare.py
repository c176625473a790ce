"""The comparison page: did the candidate keep the baseline's maps, and where did it not.

A pass/fail banner and the thresholds first; then the failed entries, worst
first, each with the baseline map, the candidate map and their |difference|
on one colour scale and the metrics that failed. A top-k class that changed
is one row pairing the two sides' classes (the comparison pairs them:
:func:`heatmap.compare.metrics.compare_folders`), never a "missing" and an
"extra" row apart. The entries that passed close the page.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from heatmap.compare.metrics import EntryComparison, FolderComparison
from heatmap.report.folders import input_file
from heatmap.report.images import PictureStore, png
from heatmap.report.page import escape, facts, number

MAP_COLORMAP = "jet"


def compare_body(comparison: FolderComparison, store: PictureStore) -> str:
    """The page's HTML (no script of its own: the kit's lightbox is all it needs)."""
    thresholds = comparison.thresholds
    failed = [entry for entry in comparison.worst_first() if not entry.passed]
    passed = [entry for entry in comparison.entries if entry.passed]
    verdict = ("pass" if comparison.passed else "fail")
    banner = (f'<div class="banner {verdict}" id="verdict">'
              + (f"PASS: all {len(comparison.entries)} entries agree" if comparison.passed else
                 f"FAIL: {len(failed)} of {len(comparison.entries)} entries differ") + "</div>")
    missing = sum(entry.candidate is None for entry in comparison.entries)
    extra = sum(entry.baseline is None for entry in comparison.entries)
    changed = sum(entry.baseline is not None and entry.candidate is not None and entry.metrics is None
                  and any("class changed" in problem for problem in entry.problems) for entry in comparison.entries)
    settings = facts([
        ("baseline", comparison.baseline_dir), ("candidate", comparison.candidate_dir),
        ("max-diff", f"≤ {thresholds.max_diff:g} (largest |difference| of the maps, each scaled to max |value| 1)"),
        ("min-corr", f"≥ {thresholds.min_corr:g} (Pearson correlation)"),
        ("min-top-iou", f"≥ {thresholds.min_top_iou:g} (overlap of the cells holding each map's top 10%)"),
        ("entries", f"{len(comparison.entries)}: {len(passed)} agree, {len(failed)} differ ({changed} changed "
                    f"class, {missing} missing, {extra} extra)"),
        ("pairing", "input, model, method, options, target"
                    + (", weights, precision" if comparison.by_configuration else ""))])
    notes = []
    for side, lines in comparison.broken_lines.items():
        if lines:
            notes.append(f'<p class="problems">{escape(side)} manifest: {len(lines)} line(s) that are not entries '
                         "left out.</p>")
    if comparison.nothing_paired:
        notes.append('<p class="problems">No entry of the baseline has a partner in the candidate: entries pair by '
                     "input path as given, model, method, options and target; run both from the same folder with "
                     "the same method and options.</p>")
    bar = store.generated("colour-bar", png(_colour_bar()))
    scale = (f'<p class="muted small">Maps scaled to max |value| 1, all three on one scale: 0 <img class="colorbar" '
             f'src="{escape(bar)}" alt="colour scale from 0 to 1"> 1</p>')
    rows = "".join(_failed_row(entry, comparison, store) for entry in failed)
    failed_html = (f'<h2>Entries that differ ({len(failed)})</h2>{scale}'
                   f'<table class="list" id="failed"><tr><th>entry</th><th>maps</th><th>why</th></tr>{rows}</table>'
                   if failed else "")
    passed_rows = "".join(_passed_row(entry) for entry in passed)
    passed_html = (f'<h2>Entries that agree ({len(passed)})</h2><details><summary>show them</summary>'
                   '<table class="list" id="passed"><tr><th>entry</th><th class="num">max-diff</th>'
                   '<th class="num">corr</th><th class="num">top-iou</th><th class="num">score change</th></tr>'
                   f"{passed_rows}</table></details>" if passed else "")
    return banner + settings + "".join(notes) + failed_html + passed_html


def _colour_bar() -> Any:
    from heatmap.compare.reports import colour_bar

    return colour_bar(MAP_COLORMAP)


def _entry_title(entry: EntryComparison) -> str:
    source = entry.source
    method = f"{source.get('method')}"
    options = source.get("options") or {}
    if options:
        method += " (" + ", ".join(f"{name}={value}" for name, value in sorted(options.items())) + ")"
    return (f'<div class="name"><b>{escape(Path(str(source.get("input"))).name)}</b></div>'
            f'<div class="small muted">{escape(method)}</div>'
            f'<div class="small muted mono">{escape(source.get("input"))}</div>')


def _target(entry: dict[str, Any]) -> str:
    if "text" in entry and "target" not in entry:
        return str(entry["text"])
    return " ".join(str(part) for part in (entry.get("target"), entry.get("label")) if part is not None)


def _failed_row(entry: EntryComparison, comparison: FolderComparison, store: PictureStore) -> str:
    maps = _maps(entry, comparison, store)
    if maps is None:  # no two maps to set side by side: each side's overlay, as its run drew it
        figures = []
        for label, folder, side in (("baseline", comparison.baseline_dir, entry.baseline),
                                    ("candidate", comparison.candidate_dir, entry.candidate)):
            if side is None:
                figures.append(f'<figure><div class="thumb empty" style="display:flex;align-items:center;'
                               f'justify-content:center">not in the {label}</div>'
                               f"<figcaption>{label}: none</figcaption></figure>")
                continue
            overlay = folder / side["files"]["png"] if isinstance(side.get("files", {}).get("png"), str) else None
            figures.append(_figure(store.thumbnail(overlay), store.link(overlay), "thumb",
                                   f"{label}: {_target(side)}", _score_text(side)))
        maps = f'<div class="maps">{"".join(figures)}</div>'
    why = "".join(f"<li>{escape(problem)}</li>" for problem in entry.problems)
    metrics = entry.metrics
    measured = (f'<div class="small muted">max-diff {number(metrics.max_diff, 4)}, corr {number(metrics.corr, 6)}, '
                f"top-iou {number(metrics.top_iou, 3)}</div>" if metrics is not None else "")
    change = (f'<div class="small muted">score change {entry.score_change:+.4g}</div>'
              if entry.score_change is not None else "")
    key = escape(json.dumps(list(entry.key)))
    return (f'<tr class="entry" data-key="{key}" data-input="{escape(entry.source.get("input"))}">'
            f"<td>{_entry_title(entry)}</td><td>{maps}</td>"
            f'<td><ul class="problems">{why}</ul>{measured}{change}</td></tr>')


def _score_text(side: dict[str, Any]) -> str:
    score = side.get("logit", side.get("score"))
    return f"score {number(score, 4)}" if score is not None else ""


def _figure(src: str | None, full: str | None, css_class: str, caption: str, detail: str = "",
            zoomed: str | None = None) -> str:
    """A picture with its caption; ``zoomed``: the lightbox's caption (default the caption)."""
    picture = (f'<img class="{css_class}" src="{escape(src)}" alt="{escape(caption)}" loading="lazy" '
               f'data-full="{escape(full or src)}" data-caption="{escape(zoomed or caption)}">' if src else
               '<div class="empty">no picture</div>')
    extra = f"<br>{escape(detail)}" if detail else ""
    return f"<figure>{picture}<figcaption>{escape(caption)}{extra}</figcaption></figure>"


def _maps(entry: EntryComparison, comparison: FolderComparison, store: PictureStore) -> str | None:
    """The baseline | candidate | |difference| figures on one scale, or None without two maps of one shape."""
    import numpy as np

    from heatmap.compare.reports import shared_scale_maps

    if entry.baseline is None or entry.candidate is None or entry.metrics is None:
        return None
    try:
        arrays = [np.load(folder / side["files"]["npy"], allow_pickle=False)
                  for folder, side in ((comparison.baseline_dir, entry.baseline),
                                       (comparison.candidate_dir, entry.candidate))]
    except (OSError, ValueError, KeyError):
        return None
    if arrays[0].shape != arrays[1].shape or not all(np.isfinite(array).all() for array in arrays):
        return None
    baseline, candidate, difference, peak = shared_scale_maps(arrays[0], arrays[1], MAP_COLORMAP)
    key = json.dumps(list(entry.key))
    addresses = [store.generated(f"{key}|{label}", png(picture))
                 for label, picture in (("baseline", baseline), ("candidate", candidate), ("difference", difference))]
    name = Path(str(entry.source.get("input"))).name
    input_path = input_file(str(entry.source.get("input")), comparison.baseline_dir)
    figures = [_figure(store.thumbnail(input_path), store.link(input_path), "map", "input", zoomed=name)
               ] if input_path else []
    figures += [_figure(addresses[0], None, "map", "baseline", _score_text(entry.baseline), f"baseline · {name}"),
                _figure(addresses[1], None, "map", "candidate", _score_text(entry.candidate), f"candidate · {name}"),
                _figure(addresses[2], None, "map", "|difference|", f"max {peak:.3g}", f"|difference| · {name}")]
    return f'<div class="maps">{"".join(figures)}</div>'


def _passed_row(entry: EntryComparison) -> str:
    metrics = entry.metrics
    cells = ([number(metrics.max_diff, 3), number(metrics.corr, 6), number(metrics.top_iou, 3)] if metrics
             else ["-", "-", "-"])
    change = f"{entry.score_change:+.3g}" if entry.score_change is not None else "-"
    return (f"<tr><td>{escape(entry.name)}</td>" + "".join(f'<td class="num">{cell}</td>' for cell in cells)
            + f'<td class="num">{change}</td></tr>')


__all__ = ["compare_body"]
