"""Pictures of maps: colormaps, overlays, CLIP token strips, labelled panels and method galleries.

NumPy and PIL only (matplotlib for a font where the system has none):

- :mod:`~heatmap.render.colormaps`: lookup tables, ``colorize``, ``normalize01``;
- :mod:`~heatmap.render.overlays`: ``overlay``, the map placed over the part of the picture the model saw;
- :mod:`~heatmap.render.text`: ``text_strip``, a CLIP text shaded by its relevance, and fonts;
- :mod:`~heatmap.render.panel`: ``panel``, one labelled picture of one map (input, overlay, colour bar, caption);
- :mod:`~heatmap.render.gallery`: ``gallery``, one labelled grid of every method's map of one image.
"""

from heatmap.render.colormaps import COLORMAPS, colorize, normalize01
from heatmap.render.overlays import OUTSIDE_BRIGHTNESS, overlay
from heatmap.render.text import STRIP_FONTS, displayable, strip_font, text_strip

__all__ = ["COLORMAPS", "OUTSIDE_BRIGHTNESS", "STRIP_FONTS", "colorize", "displayable", "normalize01", "overlay",
           "strip_font", "text_strip"]
