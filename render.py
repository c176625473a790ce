"""Turning a raw relevance map into a picture: colormaps and overlays.

NumPy and PIL only. The raw map (``[gh, gw]``, any scale) is upsampled
bilinearly to the part of the image the model saw, min-max scaled to [0, 1]
there (a constant map renders as zeros, never NaN), coloured through a
256-entry lookup table and blended over the image. Normalisation belongs here,
never to the raw map (see METHODS.md, "Rendering").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from heatmap.errors import HeatmapError

__all__ = ["COLORMAPS", "OUTSIDE_BRIGHTNESS", "colorize", "normalize01", "overlay"]

OUTSIDE_BRIGHTNESS = 0.4
"""Brightness of the image outside the box the model saw (a centre crop cuts
off the borders): darkened, so the user sees what the model did not see."""

# A map whose spread is this small relative to its magnitude is float
# round-off around a constant; stretching it to [0, 1] would paint noise.
_CONSTANT_RELATIVE_SPREAD = 1e-6


def _lookup_table(red: list[tuple[float, float]], green: list[tuple[float, float]],
                  blue: list[tuple[float, float]]) -> np.ndarray:
    """A ``[256, 3]`` uint8 table from piecewise-linear channels of (position, value in [0, 1])."""
    positions = np.linspace(0.0, 1.0, 256)
    channels = [np.interp(positions, [position for position, _ in anchors], [value for _, value in anchors])
                for anchors in (red, green, blue)]
    return np.rint(np.stack(channels, axis=-1) * 255.0).astype(np.uint8)


def _from_hex(colours: list[str]) -> np.ndarray:
    """A table interpolating linearly between evenly spaced anchor colours."""
    positions = np.linspace(0.0, 1.0, len(colours))
    rgb = np.array([[int(code[i:i + 2], 16) / 255.0 for i in (1, 3, 5)] for code in colours])
    return _lookup_table(*(list(zip(positions, rgb[:, channel], strict=False)) for channel in range(3)))


COLORMAPS: dict[str, np.ndarray] = {
    # The classic jet: each channel is exactly piecewise linear, from dark
    # blue (0, 0, 0.5) through cyan, yellow, to dark red (0.5, 0, 0).
    "jet": _lookup_table(
        red=[(0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)],
        green=[(0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)],
        blue=[(0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)],
    ),
    # The perceptually uniform maps, sampled by hand every tenth (every
    # fourteenth for turbo) and interpolated linearly: close to the published
    # tables in look, not identical to them entry by entry.
    "viridis": _from_hex(["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c",
                          "#22a884", "#44bf70", "#7ad151", "#bddf26", "#fde725"]),
    "inferno": _from_hex(["#000004", "#160b39", "#420a68", "#6a176e", "#932667", "#bc3754",
                          "#dd513a", "#f37819", "#fca50a", "#f6d746", "#fcffa4"]),
    "magma": _from_hex(["#000004", "#140e36", "#3b0f70", "#641a80", "#8c2981", "#b73779",
                        "#de4968", "#f7705c", "#fe9f6d", "#fecf92", "#fcfdbf"]),
    "turbo": _from_hex(["#30123b", "#4145ab", "#4675ed", "#39a2fc", "#1bcfd4", "#24eca6",
                        "#61fc6c", "#a4fc3b", "#d1e834", "#f3c63a", "#fe9b2d", "#f36315",
                        "#d93806", "#b11901", "#7a0403"]),
    "gray": _lookup_table(red=[(0.0, 0.0), (1.0, 1.0)], green=[(0.0, 0.0), (1.0, 1.0)],
                          blue=[(0.0, 0.0), (1.0, 1.0)]),
}
"""Colormap name -> ``[256, 3]`` uint8 lookup table (entry 0 for 0.0, entry 255 for 1.0)."""

for _table in COLORMAPS.values():
    _table.flags.writeable = False  # shared module state: nobody may repaint a colormap


def _lookup(colormap: str) -> np.ndarray:
    try:
        return COLORMAPS[colormap]
    except KeyError:
        choices = ", ".join(sorted(COLORMAPS))
        raise HeatmapError(f"unknown colormap {colormap!r}; choose one of: {choices}") from None


def colorize(values01: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """Colour values in [0, 1] through a colormap.

    Args:
        values01: Float array ``[H, W]`` (any shape works) with values in
            [0, 1]; values outside are clipped.
        colormap: A name in ``COLORMAPS``.

    Returns:
        uint8 array ``[H, W, 3]``: the table entry nearest to each value.

    Raises:
        HeatmapError: The colormap name is unknown (the message lists the choices).
        ValueError: ``values01`` holds NaN (a bug upstream, not a user error).
    """
    table = _lookup(colormap)
    values = np.asarray(values01, dtype=np.float64)
    if np.isnan(values).any():
        raise ValueError("colorize got NaN values; normalise with normalize01 first")
    indices = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.intp)
    return table[indices]


def normalize01(heatmap: np.ndarray) -> np.ndarray:
    """Min-max scale a map to [0, 1].

    Args:
        heatmap: Float array ``[H, W]`` (any shape), any scale, all finite.

    Returns:
        float32 array of the same shape: ``(x - min) / (max - min)``. A
        constant map (also all zeros, or one whose spread is only float
        round-off, below 1e-6 of its magnitude) gives zeros, never NaN.

    Raises:
        ValueError: The map holds NaN or inf (a bug upstream, not a user error).
    """
    values = np.asarray(heatmap, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("heatmap holds NaN or inf; the explainer produced an invalid map")
    if values.size == 0:
        return values.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    spread = high - low
    if spread <= _CONSTANT_RELATIVE_SPREAD * max(abs(low), abs(high)):
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - low) / spread).astype(np.float32)


def overlay(
    image: Image.Image,
    heatmap: np.ndarray,
    box: tuple[float, float, float, float] | None = None,
    colormap: str = "jet",
    alpha: float = 0.5,
) -> Image.Image:
    """Blend a coloured relevance map over the part of the image the model saw.

    Args:
        image: The picture as the user has it (any mode; used as RGB).
        heatmap: The raw map ``[gh, gw]``, any scale.
        box: ``(left, top, right, bottom)`` in the image's pixels that the
            model's input covered (a centre crop, say). Corners are rounded to
            the nearest pixel; parts outside the image (where a transform
            padded) are cut off. ``None``: the whole image.
        colormap: A name in ``COLORMAPS``.
        alpha: Weight of the colour in the blend, in [0, 1].

    Returns:
        An RGB image of ``image``'s size: ``(1 - alpha) * image + alpha *
        colour`` inside the box, the image at ``OUTSIDE_BRIGHTNESS`` outside.
        The map is upsampled bilinearly to the whole box, then min-max scaled
        over the whole box (also the parts outside the image), then coloured.

    Raises:
        HeatmapError: ``alpha`` is outside [0, 1], or the colormap is unknown.
        ValueError: The map is not 2-D or not finite, or the box is empty or
            lies entirely outside the image (bugs upstream, not user errors).
    """
    try:
        weight = float(alpha)
    except (TypeError, ValueError):
        weight = math.nan
    if not 0.0 <= weight <= 1.0:  # also rejects NaN
        raise HeatmapError(f"alpha must be a number between 0 and 1, got {alpha!r}; pass e.g. 0.5")
    _lookup(colormap)  # fail on a bad name before any work
    raw = np.asarray(heatmap, dtype=np.float32)
    if raw.ndim != 2 or raw.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D array [gh, gw], got shape {raw.shape}")
    if not np.isfinite(raw).all():
        raise ValueError("heatmap holds NaN or inf; the explainer produced an invalid map")

    picture = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width = picture.shape[:2]
    left, top, right, bottom = (0, 0, width, height) if box is None else (_nearest(c) for c in box)
    if right <= left or bottom <= top:
        raise ValueError(f"box {box} is empty")
    # The visible part of the box, in image and in box coordinates.
    visible_left, visible_top = max(left, 0), max(top, 0)
    visible_right, visible_bottom = min(right, width), min(bottom, height)
    if visible_right <= visible_left or visible_bottom <= visible_top:
        raise ValueError(f"box {box} lies outside the {width}x{height} image")

    upsampled = np.asarray(
        Image.fromarray(raw).resize((right - left, bottom - top), Image.Resampling.BILINEAR)
    )
    colour = colorize(normalize01(upsampled), colormap).astype(np.float32)

    blended = picture * OUTSIDE_BRIGHTNESS
    inside = (slice(visible_top, visible_bottom), slice(visible_left, visible_right))
    colour_inside = colour[visible_top - top:visible_bottom - top, visible_left - left:visible_right - left]
    blended[inside] = (1.0 - weight) * picture[inside] + weight * colour_inside
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8), "RGB")


def _nearest(coordinate: float) -> int:
    """Round half up, so that a box edge at x.5 moves the same way on every side."""
    return int(math.floor(float(coordinate) + 0.5))


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
