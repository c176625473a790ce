"""The map over the picture: upsampled to the part the model saw, scaled, coloured, blended.

The raw map (``[gh, gw]``, any scale) is upsampled bilinearly to the crop box
the model saw, min-max scaled to [0, 1] there (or by a range given for many
maps at once; a constant map renders as zeros, never NaN), coloured through a
colormap and blended over the picture, which is darkened outside the box.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from heatmap.errors import HeatmapError
from heatmap.render.colormaps import colorize, lookup, normalize01

__all__ = ["OUTSIDE_BRIGHTNESS", "overlay"]

OUTSIDE_BRIGHTNESS = 0.4
"""Brightness of the image outside the box the model saw (a centre crop cuts
off the borders): darkened, so the user sees what the model did not see."""


def overlay(
    image: Image.Image,
    heatmap: np.ndarray,
    box: tuple[float, float, float, float] | None = None,
    colormap: str = "jet",
    alpha: float = 0.5,
    value_range: tuple[float, float] | None = None,
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
        value_range: ``(low, high)``: the raw values shown as the colormap's
            ends, shared by many maps (``--scale batch``); None: this map's own
            minimum and maximum over the box.

    Returns:
        An RGB image of ``image``'s size: ``(1 - alpha) * image + alpha *
        colour`` inside the box, the image at ``OUTSIDE_BRIGHTNESS`` outside.
        The map is upsampled bilinearly to the whole box, then min-max scaled
        over the whole box (also the parts outside the image) or by
        ``value_range``, then coloured.

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
    lookup(colormap)  # fail on a bad name before any work
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
    colour = colorize(normalize01(upsampled, value_range), colormap).astype(np.float32)

    blended = picture * OUTSIDE_BRIGHTNESS
    inside = (slice(visible_top, visible_bottom), slice(visible_left, visible_right))
    colour_inside = colour[visible_top - top:visible_bottom - top, visible_left - left:visible_right - left]
    blended[inside] = (1.0 - weight) * picture[inside] + weight * colour_inside
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8), "RGB")


def _nearest(coordinate: float) -> int:
    """Round half up, so that a box edge at x.5 moves the same way on every side."""
    return int(math.floor(float(coordinate) + 0.5))


