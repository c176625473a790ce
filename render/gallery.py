"""Every method's map of one image and target on one labelled grid.

The input first (the crop the model saw boxed), then one tile per method:
its overlay, or, for a method that refuses the model, a grey tile with the
reason. A caption above says what is explained and how the model scored it,
so the grid reads on its own.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from heatmap.render.overlays import overlay
from heatmap.render.panel import BOX_COLOUR, Caption, fit_tile
from heatmap.render.text import displayable, strip_font

__all__ = ["Tile", "gallery", "refusal_tile"]

COLUMNS = 5
MARGIN, GAP, LABEL = 14, 10, 22
REFUSAL_BACKGROUND = (235, 235, 235)


@dataclass
class Tile:
    """One method's tile: its map, or the reason it has none.

    Attributes:
        method: the method's name, written under the tile.
        heatmap: the raw map ``[gh, gw]``, or None when refused.
        refusal: why the method cannot explain the model (shown in the tile), or None.
    """

    method: str
    heatmap: np.ndarray | None = None
    refusal: str | None = None


def gallery(picture: Image.Image, box: tuple[float, float, float, float] | None, caption: Caption,
            tiles: list[Tile], colormap: str = "jet", alpha: float = 0.5, columns: int = COLUMNS) -> Image.Image:
    """The grid: the input, then each method's overlay (each map scaled by its own range) or its refusal.

    Args:
        picture: the input as the user has it.
        box: the part of ``picture`` the model saw (None: all of it).
        caption: what is explained (the method line is left out: every tile names its method).
        tiles: one per method, in order.
        colormap, alpha: as :func:`heatmap.render.overlay`.
        columns: tiles per row (the input included).
    """
    tile, tile_box = fit_tile(picture, box)
    boxed = tile.copy()
    if any(abs(a - b) > 0.5 for a, b in zip(tile_box, (0, 0, tile.width, tile.height), strict=True)):
        ImageDraw.Draw(boxed).rectangle([round(c) for c in tile_box], outline=BOX_COLOUR,
                                        width=max(2, tile.width // 160))
    font, title_font = strip_font(13), strip_font(17)
    pictures = [("input", boxed)]
    for entry in tiles:
        if entry.heatmap is None:
            pictures.append((entry.method, refusal_tile(entry.refusal or "refused", tile.size, font)))
        else:
            pictures.append((entry.method, overlay(tile, np.asarray(entry.heatmap, dtype=np.float32), tile_box,
                                                   colormap, alpha)))
    columns = max(1, min(columns, len(pictures)))
    rows = -(-len(pictures) // columns)
    cell_width, cell_height = tile.width + GAP, tile.height + LABEL + GAP
    lines = [(displayable(caption.title, title_font), title_font, (0, 0, 0))]
    details = " · ".join(part for part in (caption.model, caption.figures) if part)
    if details:
        lines.append((details, font, (0, 0, 0)))
    if caption.warning:
        lines.append((caption.warning, font, (200, 0, 0)))
    lines.append((f"each map coloured by its own range ({colormap}): the first colour is its lowest relevance, "
                  "the last its highest", font, (90, 90, 90)))
    header = sum(int(f.size * 1.35) for _, f, _ in lines) + GAP
    canvas = Image.new("RGB", (2 * MARGIN + columns * cell_width - GAP, 2 * MARGIN + header + rows * cell_height
                               - GAP), "white")
    draw = ImageDraw.Draw(canvas)
    y = MARGIN
    for text, line_font, colour in lines:
        draw.text((MARGIN, y), text, fill=colour, font=line_font)
        y += int(line_font.size * 1.35)
    for index, (label, image) in enumerate(pictures):
        x = MARGIN + (index % columns) * cell_width
        top = MARGIN + header + (index // columns) * cell_height
        canvas.paste(image, (x, top))
        draw.text((x + tile.width / 2, top + tile.height + 4), label, fill=(0, 0, 0), font=font, anchor="ma")
    return canvas


def refusal_tile(message: str, size: tuple[int, int], font: Any) -> Image.Image:
    """A grey tile with a refusal's reason, word-wrapped (the part before ", so it is not supported")."""
    tile = Image.new("RGB", size, REFUSAL_BACKGROUND)
    reason = message.removeprefix("error: ").split(", so it is not supported")[0]
    width = max(12, int(size[0] / 7.5))  # characters per line at the 13 px font
    lines = textwrap.wrap("refused: " + reason, width=width)
    ImageDraw.Draw(tile).multiline_text((8, 8), "\n".join(lines), fill="black", font=font, spacing=3)
    return tile
