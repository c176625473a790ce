"""Where in the original picture the model's input came from.

The model sees a resized, often centre-cropped picture; an overlay at the
picture's own size must put the map back where that crop came from. This
follows the geometric steps of a torchvision transform pipeline.
"""

from __future__ import annotations

from typing import Any

from torchvision import transforms as T

# Steps that change values but not geometry.
_VALUE_ONLY = (T.ToTensor, T.PILToTensor, T.Normalize, T.ConvertImageDtype, T.Lambda)


def _value_only(step: Any) -> bool:
    return isinstance(step, _VALUE_ONLY) or type(step).__name__ in {"MaybeToTensor", "MaybePILToTensor", "ToNumpy"}


def crop_box(transform: Any, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The box of the original picture that ``transform``'s output shows.

    Args:
        transform: a ``torchvision.transforms.Compose`` (or a single step).
        size: the picture's ``(width, height)``.

    Returns:
        ``(left, top, right, bottom)`` in the picture's pixels; it may reach
        past the picture where a step pads. For a step whose geometry is not
        known here, the whole picture.
    """
    steps = transform.transforms if isinstance(transform, T.Compose) else [transform]
    width, height = size
    # The current image's pixel (x, y) shows original pixel (x0 + x * sx, y0 + y * sy).
    x0 = y0 = 0.0
    sx = sy = 1.0
    for step in steps:
        if isinstance(step, T.Resize):
            new_w, new_h = _resized(step, width, height)
            sx, sy = sx * width / new_w, sy * height / new_h
            width, height = new_w, new_h
        elif isinstance(step, T.CenterCrop):
            crop_h, crop_w = step.size
            top = int(round((height - crop_h) / 2.0)) if crop_h <= height else -((crop_h - height) // 2)
            left = int(round((width - crop_w) / 2.0)) if crop_w <= width else -((crop_w - width) // 2)
            x0, y0 = x0 + left * sx, y0 + top * sy
            width, height = crop_w, crop_h
        elif not _value_only(step):
            return (0.0, 0.0, float(size[0]), float(size[1]))
    return (x0, y0, x0 + width * sx, y0 + height * sy)


def _resized(step: T.Resize, width: int, height: int) -> tuple[int, int]:
    """The output size of torchvision's Resize, by its own rule."""
    size = step.size
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[1]), int(size[0])
    short_target = int(size[0] if isinstance(size, (list, tuple)) else size)
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = short_target, int(short_target * long / short)
    if step.max_size is not None and new_long > step.max_size:
        new_short, new_long = int(step.max_size * new_short / new_long), step.max_size
    return (new_short, new_long) if width <= height else (new_long, new_short)
