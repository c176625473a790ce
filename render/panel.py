"""One labelled picture of one map: what a person needs to read it without the code.

A panel shows, side by side, the input (the crop box the model saw drawn on
it) and the overlay, a colour bar with the raw values its ends stand for,
and above them what the map explains: the class or text, the method, the
model, the score, the probability and the rank. A target the model does not
rank among its top classes is flagged in red, so an absent class is not
mistaken for a found one. A CLIP panel has the text's token strip under it.

Small inputs are enlarged with nearest-neighbour sampling (every model pixel
stays a visible block) to at least :data:`TILE_MIN` pixels; large ones are
reduced to :data:`TILE_MAX`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from heatmap.render.colormaps import colorize
from heatmap.render.overlays import overlay
from heatmap.render.text import displayable, strip_font, text_strip

__all__ = ["Caption", "caption_of", "fit_tile", "panel"]

TILE_MIN = 256  # the shortest a tile's longest side may be: 96 px scenes are enlarged to 288
TILE_MAX = 512
MARGIN, GAP, BAR_WIDTH = 14, 12, 18
TEXT, SMALL = 17, 13  # font sizes
BOX_COLOUR = (255, 200, 0)  # the crop box on the input: visible on dark and light pictures
WARNING_COLOUR = (200, 0, 0)


@dataclass
class Caption:
    """What a panel says of its map.

    Attributes:
        title: the class ("star (class 3)") or the text ("a white star").
        method: the method's name.
        model: the model's name, or None.
        figures: the numbers: logit, probability, rank ("logit 3.33 · p 21.0% · rank 2 of 10").
        warning: a line in red when the map may mislead (a class the model does not predict), or None.
    """

    title: str
    method: str
    model: str | None = None
    figures: str = ""
    warning: str | None = None


def caption_of(method: str, model: str | None, fields: Mapping[str, Any], top_k: int = 1) -> Caption:
    """The caption of a map from its manifest fields (``MapRecord.fields`` or a manifest line).

    Args:
        method, model: the method's and the model's names.
        fields: classifiers: ``target``, ``label``, ``score``, and when known
            ``probability``, ``class_rank`` (0 = the top class), ``classes``;
            CLIP: ``text``, ``logit``, ``probability``.
        top_k: a class ranked below the top ``top_k`` is flagged.
    """
    if "text" in fields:
        figures = [f"logit {float(fields['logit']):.2f}"]
        if fields.get("probability") is not None:
            figures.append(f"p {float(fields['probability']):.1%}")
        return Caption(str(fields["text"]), method, model, " · ".join(figures))
    label, target = fields.get("label"), fields.get("target")
    title = f"{label} (class {target})" if label else f"class {target}"
    figures = [f"logit {float(fields['score']):.2f}"]
    if fields.get("probability") is not None:
        figures.append(f"p {float(fields['probability']):.1%}")
    warning = None
    rank = fields.get("class_rank")
    if rank is not None:
        classes = fields.get("classes")
        figures.append(f"rank {int(rank) + 1}" + (f" of {classes}" if classes else ""))
        if int(rank) >= top_k:
            warning = ("not the class the model predicts" if top_k == 1
                       else f"not among the model's top {top_k} classes")
    return Caption(title, method, model, " · ".join(figures), warning)


def fit_tile(picture: Image.Image, box: tuple[float, float, float, float] | None,
             ) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """``picture`` at a tile's size, and ``box`` (None: the whole picture) scaled with it.

    A longest side under :data:`TILE_MIN` is multiplied by the smallest whole
    factor that reaches it (nearest neighbour); one over :data:`TILE_MAX` is
    reduced to it (Lanczos).
    """
    picture = picture.convert("RGB")
    longest = max(picture.size)
    if box is None:
        box = (0.0, 0.0, float(picture.width), float(picture.height))
    if longest < TILE_MIN:
        factor: float = math.ceil(TILE_MIN / longest)
        resample = Image.Resampling.NEAREST
    elif longest > TILE_MAX:
        factor, resample = TILE_MAX / longest, Image.Resampling.LANCZOS
    else:
        return picture, box
    size = (max(1, round(picture.width * factor)), max(1, round(picture.height * factor)))
    return picture.resize(size, resample), (box[0] * factor, box[1] * factor, box[2] * factor, box[3] * factor)


def panel(picture: Image.Image, heatmap: np.ndarray, box: tuple[float, float, float, float] | None,
          caption: Caption, colormap: str = "jet", alpha: float = 0.5,
          value_range: tuple[float, float] | None = None, word_pieces: list[str] | None = None,
          token_relevance: np.ndarray | None = None) -> Image.Image:
    """The labelled picture of one map.

    Args:
        picture: the input as the user has it.
        heatmap: the raw map ``[gh, gw]``.
        box: the part of ``picture`` the model saw (None: all of it).
        caption: what the panel says (:func:`caption_of`).
        colormap, alpha: as :func:`heatmap.render.overlay`.
        value_range: the raw values the colour bar's ends stand for, shared
            by every map of a run (``--scale batch``); None: this map's own
            minimum and maximum.
        word_pieces, token_relevance: CLIP: the text's token strip, drawn under the pictures.

    Returns:
        An RGB image.
    """
    raw = np.asarray(heatmap, dtype=np.float64)
    shared = value_range is not None
    low, high = value_range if value_range is not None else (float(raw.min()), float(raw.max()))
    tile, tile_box = fit_tile(picture, box)
    coloured = overlay(tile, raw.astype(np.float32), tile_box, colormap, alpha, (low, high))
    boxed = tile.copy()
    whole = (0.0, 0.0, float(tile.width), float(tile.height))
    cropped = any(abs(a - b) > 0.5 for a, b in zip(tile_box, whole, strict=True))
    if cropped:
        ImageDraw.Draw(boxed).rectangle([round(c) for c in tile_box], outline=BOX_COLOUR,
                                        width=max(2, tile.width // 160))
    text_font, small_font = strip_font(TEXT), strip_font(SMALL)
    bar_labels = _bar_labels(low, high, shared)
    label_width = max(int(small_font.getlength(label)) for label in bar_labels) + 6
    width = 2 * MARGIN + 2 * tile.width + 2 * GAP + BAR_WIDTH + label_width
    inner = width - 2 * MARGIN

    header = [(line, text_font, (0, 0, 0)) for line in _wrapped(displayable(caption.title, text_font), text_font,
                                                                  inner)]
    byline = " · ".join(part for part in (caption.method, caption.model) if part)
    header += [(line, small_font, (70, 70, 70)) for line in _wrapped(byline, small_font, inner)]
    if caption.figures:
        header += [(line, small_font, (0, 0, 0)) for line in _wrapped(caption.figures, small_font, inner)]
    if caption.warning:
        header += [(line, small_font, WARNING_COLOUR) for line in _wrapped(caption.warning, small_font, inner)]
    header_height = sum(_line_height(font) for _, font, _ in header)

    strip = None
    if word_pieces is not None and token_relevance is not None and len(word_pieces):
        strip = text_strip(word_pieces, token_relevance)
        if strip.width > inner:
            strip = strip.resize((inner, max(1, round(strip.height * inner / strip.width))),
                                 Image.Resampling.LANCZOS)
    tiles_top = MARGIN + header_height + GAP // 2
    under_tiles = tiles_top + tile.height + 4
    height = under_tiles + _line_height(small_font) + MARGIN
    if strip is not None:
        height += _line_height(small_font) + strip.height + GAP
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = MARGIN
    for line, font, colour in header:
        draw.text((MARGIN, y), line, fill=colour, font=font)
        y += _line_height(font)

    canvas.paste(boxed, (MARGIN, tiles_top))
    canvas.paste(coloured, (MARGIN + tile.width + GAP, tiles_top))
    input_label = "input, the part the model saw boxed" if cropped else "input"
    draw.text((MARGIN, under_tiles), _fitted(input_label, small_font, tile.width), fill=(70, 70, 70),
              font=small_font)
    draw.text((MARGIN + tile.width + GAP, under_tiles), _fitted("relevance", small_font, tile.width),
              fill=(70, 70, 70), font=small_font)

    bar_left = MARGIN + 2 * tile.width + 2 * GAP
    gradient = colorize(np.linspace(1.0, 0.0, tile.height)[:, None].repeat(BAR_WIDTH, axis=1), colormap)
    canvas.paste(Image.fromarray(gradient, "RGB"), (bar_left, tiles_top))
    draw.rectangle([bar_left, tiles_top, bar_left + BAR_WIDTH - 1, tiles_top + tile.height - 1], outline=(0, 0, 0))
    top_label, bottom_label = bar_labels[0], bar_labels[1]
    draw.text((bar_left + BAR_WIDTH + 4, tiles_top), top_label, fill=(0, 0, 0), font=small_font)
    draw.text((bar_left + BAR_WIDTH + 4, tiles_top + tile.height), bottom_label, fill=(0, 0, 0), font=small_font,
              anchor="ld")
    for index, note in enumerate(bar_labels[2:]):
        draw.text((bar_left + BAR_WIDTH + 4, tiles_top + tile.height // 2 + index * _line_height(small_font)),
                  note, fill=(70, 70, 70), font=small_font)

    if strip is not None:
        y = under_tiles + _line_height(small_font) + GAP
        draw.text((MARGIN, y), "the text's word pieces, shaded by relevance", fill=(70, 70, 70), font=small_font)
        canvas.paste(strip, (MARGIN, y + _line_height(small_font)))
    return canvas


def _bar_labels(low: float, high: float, shared: bool) -> list[str]:
    """The colour bar's top and bottom values, then notes for its middle."""
    notes = ["one range", "for the run"] if shared else ["this map's", "own range"]
    if not high - low > 1e-6 * max(abs(low), abs(high)):
        return [f"{high:.3g}", f"{low:.3g}", "constant:", "no peak"]
    return [f"{high:.3g}", f"{low:.3g}", *notes]


def _line_height(font: Any) -> int:
    return int(font.size * 1.35)


def _wrapped(text: str, font: Any, width: int) -> list[str]:
    """``text`` cut into lines no wider than ``width`` pixels, at spaces where it can be."""
    lines: list[str] = []
    for word in text.split(" "):
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
            continue
        while font.getlength(word) > width and len(word) > 1:  # a word wider than the panel: cut it
            cut = max(1, int(len(word) * width / font.getlength(word)))
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines or [""]


def _fitted(text: str, font: Any, width: int) -> str:
    """``text``, shortened with "…" to fit ``width`` pixels."""
    while text and font.getlength(text) > width:
        text = text[:-2] + "…"
        if text == "…":
            break
    return text
