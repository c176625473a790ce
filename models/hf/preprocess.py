"""A transformers image processor's settings as a torchvision transform.

The adapters preprocess with torchvision (whose resize and centre crop
:mod:`heatmap.models.geometry` can follow back to the original picture for the
overlay), so the processor's own steps are rebuilt from its configuration:
resize (to a shortest edge, or to height x width), centre crop, rescale,
normalise. A processor step with no torchvision counterpart is refused by name.
"""

from __future__ import annotations

from typing import Any

from torchvision import transforms as T

from heatmap.errors import UnsupportedModelError

# PIL's resampling filters by number (transformers keeps them as PIL numbers or PILImageResampling)
_INTERPOLATIONS = {0: T.InterpolationMode.NEAREST, 1: T.InterpolationMode.LANCZOS, 2: T.InterpolationMode.BILINEAR,
                   3: T.InterpolationMode.BICUBIC, 4: T.InterpolationMode.BOX, 5: T.InterpolationMode.HAMMING}


def _field(size: Any, key: str) -> int | None:
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)  # a dict or a SizeDict
    return None if value is None else int(value)


def _interpolation(resample: Any) -> T.InterpolationMode:
    if isinstance(resample, T.InterpolationMode):
        return resample
    return _INTERPOLATIONS[int(getattr(resample, "value", resample) if resample is not None else 3)]


def transform_from_processor(processor: Any, name: str) -> T.Compose:
    """The torchvision transform that does what ``processor`` (a transformers image processor) does.

    Raises:
        UnsupportedModelError: for a processor step with no counterpart here (another rescale factor, padding...).
    """
    steps: list[Any] = [T.Lambda(_as_rgb)]
    if getattr(processor, "do_resize", False):
        size = processor.size
        shortest, height, width = _field(size, "shortest_edge"), _field(size, "height"), _field(size, "width")
        interpolation = _interpolation(getattr(processor, "resample", None))
        if shortest is not None:
            steps.append(T.Resize(shortest, interpolation=interpolation))
        elif height is not None and width is not None:
            steps.append(T.Resize((height, width), interpolation=interpolation))
        else:
            raise UnsupportedModelError(f"{name}: its image processor resizes to {size}, which is not followed here")
    if getattr(processor, "do_center_crop", False):
        crop = getattr(processor, "crop_size", None)
        crop_height, crop_width = _field(crop, "height"), _field(crop, "width")
        if crop_height is None or crop_width is None:
            raise UnsupportedModelError(f"{name}: its image processor crops to {crop}, which is not followed here")
        steps.append(T.CenterCrop((crop_height, crop_width)))
    for flag in ("do_pad", "do_reduce_labels"):
        if getattr(processor, flag, False):
            raise UnsupportedModelError(f"{name}: its image processor's {flag} step is not supported")
    if not getattr(processor, "do_rescale", True):
        raise UnsupportedModelError(f"{name}: its image processor keeps pixels in 0..255 (do_rescale is off), "
                                    "which is not followed here")
    factor = float(getattr(processor, "rescale_factor", 1 / 255))
    if abs(factor - 1 / 255) > 1e-12:
        raise UnsupportedModelError(f"{name}: its image processor rescales pixels by {factor}, not 1/255")
    steps.append(T.ToTensor())  # to [0, 1], what rescaling by 1/255 does
    if getattr(processor, "do_normalize", False):
        steps.append(T.Normalize(list(processor.image_mean), list(processor.image_std)))
    return T.Compose(steps)


def _as_rgb(picture: Any) -> Any:
    return picture.convert("RGB") if getattr(picture, "mode", "RGB") != "RGB" else picture
