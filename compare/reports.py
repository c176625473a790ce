"""What ``heatmap compare`` leaves for people and CI systems besides its table.

- :func:`junit_xml`: one JUnit test case per entry, so a CI system lists
  every drifted image as a failed test (with the metrics that failed);
- :func:`write_difference_pictures`: for each failed entry with both maps,
  a picture of the baseline map, the candidate map and their difference;
- :func:`shared_scale_maps`: the same three maps as separate pictures on one
  colour scale, for the comparison's HTML page.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from heatmap.compare.metrics import EntryComparison, FolderComparison, scaled
from heatmap.outputs import png_bytes, write_atomically
from heatmap.render import colorize, normalize01

PANEL = 192  # pixels per side of each map in a difference picture
CAPTION = 22


def junit_xml(comparison: FolderComparison) -> bytes:
    """The comparison as JUnit XML: a test suite with one test case per entry."""
    thresholds = comparison.thresholds
    suite = ElementTree.Element("testsuite", {
        "name": "heatmap compare", "tests": str(len(comparison.entries)),
        "failures": str(len(comparison.failed)), "errors": "0", "skipped": "0", "time": "0"})
    properties = ElementTree.SubElement(suite, "properties")
    for name, value in (("baseline", comparison.baseline_dir), ("candidate", comparison.candidate_dir),
                        ("max-diff", thresholds.max_diff), ("min-corr", thresholds.min_corr),
                        ("min-top-iou", thresholds.min_top_iou)):
        ElementTree.SubElement(properties, "property", {"name": name, "value": str(value)})
    for entry in comparison.entries:
        case = ElementTree.SubElement(suite, "testcase", {
            "classname": f"heatmap.{entry.source['method']}", "name": entry.name, "time": "0"})
        if not entry.passed:
            failure = ElementTree.SubElement(case, "failure", {"message": "; ".join(entry.problems),
                                                               "type": "HeatmapDrift"})
            failure.text = describe(entry)
        else:
            ElementTree.SubElement(case, "system-out").text = describe(entry)
    root = ElementTree.Element("testsuites", {"tests": str(len(comparison.entries)),
                                              "failures": str(len(comparison.failed))})
    root.append(suite)
    ElementTree.indent(root)
    xml: bytes = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
    return xml


def describe(entry: EntryComparison) -> str:
    """The entry's metrics and files, a few lines of plain text."""
    lines = []
    if entry.metrics is not None:
        metrics = entry.metrics
        lines.append(f"max-diff {metrics.max_diff:.6g}, corr {metrics.corr:.6g}, top-iou {metrics.top_iou:.4g}")
    if entry.score_change is not None:
        lines.append(f"target score change {entry.score_change:+.6g}")
    for label, side in (("baseline", entry.baseline), ("candidate", entry.candidate)):
        if side is not None:
            lines.append(f"{label}: {side['files']['npy']}")
    lines.extend(entry.problems)
    return "\n".join(lines)


def write_difference_pictures(comparison: FolderComparison, folder: Path) -> list[Path]:
    """A PNG per failed entry that has both maps: baseline | candidate | |difference|.

    Both maps are scaled to max |value| = 1 (as the metrics see them) and
    coloured on the same [0, 1] scale; the difference is coloured on [0, its
    maximum], written in its caption.

    Returns:
        the pictures written, in the order of the entries.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for entry in comparison.failed:
        if entry.baseline is None or entry.candidate is None:
            continue
        try:
            maps = [np.load(directory / side["files"]["npy"], allow_pickle=False)
                    for directory, side in ((comparison.baseline_dir, entry.baseline),
                                            (comparison.candidate_dir, entry.candidate))]
        except (OSError, ValueError):
            continue
        if maps[0].shape != maps[1].shape or not all(np.isfinite(m).all() for m in maps):
            continue
        path = folder / f"{Path(entry.baseline['files']['npy']).stem}.diff.png"
        write_atomically(path, png_bytes(difference_picture(*maps)))
        written.append(path)
    return written


def difference_picture(baseline: np.ndarray, candidate: np.ndarray) -> Image.Image:
    """Three captioned panels: the two maps (scaled to max |value| = 1) and their absolute difference."""
    a, b = scaled(baseline), scaled(candidate)
    difference = np.abs(a - b)
    peak = float(difference.max())
    panels = [("baseline", colorize(np.clip(a, 0, 1), "jet")), ("candidate", colorize(np.clip(b, 0, 1), "jet")),
              (f"|difference|, max {peak:.3g}", colorize(normalize01(difference) if peak > 0
                                                         else np.zeros_like(difference), "inferno"))]
    picture = Image.new("RGB", (3 * PANEL + 2 * 4, PANEL + CAPTION), "white")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=14)
    for index, (caption, colours) in enumerate(panels):
        left = index * (PANEL + 4)
        panel = Image.fromarray(colours).resize((PANEL, PANEL), Image.Resampling.NEAREST)
        picture.paste(panel, (left, CAPTION))
        draw.text((left + 2, 3), caption, fill="black", font=font)
    return picture


def shared_scale_maps(baseline: np.ndarray, candidate: np.ndarray, colormap: str = "jet"
                      ) -> tuple[Image.Image, Image.Image, Image.Image, float]:
    """The two maps (each scaled to max |value| = 1) and their absolute difference, coloured on ONE [0, 1] scale.

    One scale for all three, so that the difference's colour reads as the same amount as the maps' own:
    a drift of 0.05 stays faint where :func:`difference_picture` would stretch it to full colour.
    Negative values are shown as 0, differences above 1 as 1.

    Returns:
        the baseline, candidate and difference pictures at the maps' own size, and the largest difference.
    """
    a, b = scaled(baseline), scaled(candidate)
    difference = np.abs(a - b)
    pictures = [Image.fromarray(colorize(np.clip(values, 0, 1), colormap)) for values in (a, b, difference)]
    return pictures[0], pictures[1], pictures[2], float(difference.max()) if difference.size else 0.0


def colour_bar(colormap: str = "jet", width: int = 256) -> Image.Image:
    """The colormap from 0 (left) to 1 (right), one pixel high: the key of :func:`shared_scale_maps`."""
    return Image.fromarray(colorize(np.linspace(0.0, 1.0, width)[None, :], colormap))


__all__ = ["colour_bar", "difference_picture", "junit_xml", "shared_scale_maps", "write_difference_pictures"]
