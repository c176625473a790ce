"""CLIP texts as pictures: word pieces shaded by relevance, and the fonts that draw them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from heatmap.render.colormaps import colorize

__all__ = ["displayable", "strip_font", "text_strip"]


def text_strip(word_pieces: list[str], relevance: np.ndarray, colormap: str = "inferno",
               font_size: int = 20) -> Image.Image:
    """The text as a strip of word pieces, each shaded by its relevance.

    Args:
        word_pieces: the tokens between start and end-of-text, as text.
        relevance: float ``[len(word_pieces)]``, any scale; scaled by its
            maximum (negative values, which the methods do not produce, count as 0).
        colormap: the shading's colormap.
        font_size: pixels.

    Returns:
        an RGB image, one padded cell per word piece, dark text on light
        cells and light text on dark ones.
    """
    from PIL import ImageDraw

    values = np.clip(np.asarray(relevance, dtype=np.float64), 0.0, None)
    if len(values) != len(word_pieces):
        raise ValueError(f"{len(word_pieces)} word pieces but {len(values)} relevances")
    peak = values.max() if values.size else 0.0
    shades = values / peak if peak > 0 else np.zeros_like(values)
    colours = colorize(shades[None, :], colormap)[0] if values.size else np.zeros((0, 3), np.uint8)
    font = strip_font(font_size)
    word_pieces = [displayable(piece, font) for piece in word_pieces]
    pad = font_size // 3
    widths = [int(font.getlength(piece or " ")) + 2 * pad for piece in word_pieces]
    height = font_size + 2 * pad
    strip = Image.new("RGB", (max(sum(widths), 1), height), "white")
    draw = ImageDraw.Draw(strip)
    left = 0
    for piece, width, colour in zip(word_pieces, widths, colours, strict=False):
        draw.rectangle([left, 0, left + width - 1, height - 1], fill=tuple(int(c) for c in colour))
        light = float(np.dot(colour, [0.299, 0.587, 0.114])) > 140
        draw.text((left + pad, pad // 2), piece, fill="black" if light else "white", font=font)
        left += width
    return strip


# Fonts for token strips, best first: DejaVu Sans covers Latin, Greek, Cyrillic and
# many symbols (matplotlib ships it; most Linux systems have it); PIL's own font is last.
STRIP_FONTS = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
               "/usr/share/fonts/TTF/DejaVuSans.ttf", "/Library/Fonts/Arial Unicode.ttf")


def strip_font(size: int) -> Any:
    """The first font of ``STRIP_FONTS`` that loads, else PIL's default."""
    from PIL import ImageFont

    for candidate in STRIP_FONTS:
        try:
            return ImageFont.truetype(candidate, size)
        except OSError:
            continue
    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size=size)


def displayable(piece: str, font: Any) -> str:
    """``piece`` with every character ``font`` has no glyph for written as its code point (``U+1F642``).

    A missing glyph would be drawn as an empty box; a code point at least says
    which character it was.
    """
    return "".join(character if _has_glyph(font, character) else f"U+{ord(character):04X}" for character in piece)


def _has_glyph(font: Any, character: str) -> bool:
    if character.isspace() or ord(character) < 128:
        return True
    key = (id(font), character)
    if key not in _GLYPHS:
        # the font's "missing glyph" box is what an unassigned code point draws
        _GLYPHS[key] = _drawn(font, character) != _drawn(font, "\U0010fffe")
    return _GLYPHS[key]


def _drawn(font: Any, character: str) -> tuple[Any, bytes]:
    """How ``font`` draws ``character``: its box and its pixels."""
    mask = font.getmask(character)
    width, height = mask.size
    return font.getbbox(character), bytes(mask) if width and height else b""


_GLYPHS: dict[tuple[int, str], bool] = {}
