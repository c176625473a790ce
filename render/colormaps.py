"""Colormaps: 256-entry lookup tables, and values in [0, 1] coloured through them; min-max scaling.

NumPy only. Normalisation belongs to rendering, never to the raw map (see
docs/METHODS.md, "Rendering").
"""

from __future__ import annotations

import numpy as np

from heatmap.errors import HeatmapError

__all__ = ["COLORMAPS", "colorize", "lookup", "normalize01"]

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


def lookup(colormap: str) -> np.ndarray:
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
    table = lookup(colormap)
    values = np.asarray(values01, dtype=np.float64)
    if np.isnan(values).any():
        raise ValueError("colorize got NaN values; normalise with normalize01 first")
    indices = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.intp)
    return table[indices]


def normalize01(heatmap: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Min-max scale a map to [0, 1], by its own range or by one given.

    Args:
        heatmap: Float array ``[H, W]`` (any shape), any scale, all finite.
        value_range: ``(low, high)`` shown as 0 and 1 (values outside are
            clipped), shared by several maps; None: the map's own minimum and maximum.

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
    low, high = (values.min(), values.max()) if value_range is None else value_range
    low, high = float(low), float(high)
    spread = high - low
    if spread <= _CONSTANT_RELATIVE_SPREAD * max(abs(low), abs(high)):
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values - low) / spread, 0.0, 1.0).astype(np.float32)


