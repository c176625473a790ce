"""What an evaluation reads: images in [0, 1] pixel space at the model's input size, labels, masks.

The protocols perturb pixels BEFORE the model's normalisation
(docs/METHODS.md), so an image is kept as the model's transform makes it up
to, but not including, ``Normalize``; the scorer normalises each perturbed
copy. Masks go through the same geometry as their image (the crop box of the
transform, then a nearest-neighbour resize), so that mask and map line up
pixel for pixel.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms as T

from heatmap.errors import HeatmapError, UsageError
from heatmap.models.geometry import crop_box

MaskLike = Union[np.ndarray, Image.Image, str, Path]


@dataclass
class EvalImage:
    """One image to evaluate on.

    Attributes:
        name: the input as given (a path, or ``image <i>``).
        pixels: ``[3, H, W]`` float32 in [0, 1] at the model's input size (CPU).
        labels: the ground-truth labels (class indices or names; CLIP: texts), or empty.
        masks: per label, the object's mask ``[H, W]`` bool at the input size;
            the key None holds a mask that is the image's one object.
    """

    name: str
    pixels: torch.Tensor
    labels: list[Any] = field(default_factory=list)
    masks: dict[Any, np.ndarray] = field(default_factory=dict)

    def mask_for(self, *names: Any) -> np.ndarray | None:
        """The mask of the first of ``names`` that has one, else the image's one mask, else None."""
        for name in names:
            if name is not None and name in self.masks:
                return self.masks[name]
        return self.masks.get(None)


def split_normalisation(transform: Any) -> tuple[Any, tuple[float, ...], tuple[float, ...]]:
    """The model's transform without its final ``Normalize``, and that step's mean and std.

    Raises:
        UsageError: when the transform does not end in ``Normalize`` (give ``mean`` and ``std``).
    """
    steps = list(transform.transforms) if isinstance(transform, T.Compose) else [transform]
    if not steps or not isinstance(steps[-1], T.Normalize):
        raise UsageError("the model's transform does not end in Normalize; give mean= and std= "
                         "(the normalisation the model expects) and images as a [B, 3, H, W] tensor in [0, 1]")
    normalise = steps[-1]
    mean = tuple(float(v) for v in torch.as_tensor(normalise.mean).flatten())
    std = tuple(float(v) for v in torch.as_tensor(normalise.std).flatten())
    return T.Compose(steps[:-1]), mean, std


def image_masks(picture_size: tuple[int, int], transform: Any, input_size: tuple[int, int],
                masks: Union[MaskLike, Mapping[Any, MaskLike], None]) -> dict[Any, np.ndarray]:
    """Masks at the picture's size (or at the input size already) -> bool masks at the input size."""
    if masks is None:
        return {}
    given = masks if isinstance(masks, Mapping) else {None: masks}
    box = crop_box(transform, picture_size)
    return {name: to_input_geometry(mask, picture_size, box, input_size) for name, mask in given.items()}


def to_input_geometry(mask: MaskLike, picture_size: tuple[int, int], box: tuple[float, float, float, float],
                      input_size: tuple[int, int]) -> np.ndarray:
    """One mask (nonzero = object) -> ``[H, W]`` bool at the input size, through the image's crop box."""
    if isinstance(mask, (str, Path)):
        mask = read_mask(Path(mask))
    elif isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L")) > 0
    array: np.ndarray = np.asarray(mask) != 0
    height, width = input_size
    if array.shape == (height, width):
        return array
    if array.shape != (picture_size[1], picture_size[0]):
        raise UsageError(f"a mask of {array.shape[1]}x{array.shape[0]} pixels does not fit its image "
                         f"({picture_size[0]}x{picture_size[1]}) nor the model's input ({width}x{height})")
    left, top, right, bottom = (round(v) for v in box)
    cropped = Image.fromarray(array.astype(np.uint8) * 255).crop((left, top, right, bottom))
    return np.asarray(cropped.resize((width, height), Image.Resampling.NEAREST)) > 0


def read_mask(path: Path) -> np.ndarray:
    """A mask file -> ``[H, W]`` bool (nonzero = object).

    Raises:
        HeatmapError: naming the file, when it cannot be read, is not an image, or is a picture too large to
            decode safely (over PIL's ``Image.MAX_IMAGE_PIXELS``, refused as ``load_image`` refuses images).
    """
    try:
        with warnings.catch_warnings():
            # above the limit PIL only warns (it refuses at twice the limit); refuse both, as for images
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                return np.asarray(opened.convert("L")) > 0
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise HeatmapError(f"mask {path}: too large to decode safely ({' '.join(str(error).split())}); "
                           "downscale it to its image's size") from None
    except UnidentifiedImageError:
        raise HeatmapError(f"mask {path}: not an image PIL can read; save the mask as a PNG") from None
    except OSError as error:
        raise HeatmapError(f"mask {path}: cannot read it ({error}); write the mask again") from None


def read_labels(path: Path) -> dict[str, list[str]]:
    """A CSV ``image,label`` (a header row is allowed) -> image -> its labels, in file order.

    The image column matches an input by its path as given, its file name or its stem.

    Raises:
        UsageError: for an unreadable file or a row without two columns.
    """
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read --labels {path}: {error}") from None
    labels: dict[str, list[str]] = {}
    for number, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise UsageError(f"--labels {path}, line {number}: expected 'image,label', got {','.join(row)!r}")
        image, label = row[0].strip(), ",".join(row[1:]).strip()
        if number == 1 and (image.lower(), label.lower()) == ("image", "label"):
            continue
        labels.setdefault(image, []).append(label)
    return labels


def labels_of(path: Path, table: dict[str, list[str]]) -> list[str]:
    """The labels of the image at ``path``: by its path as given, its file name or its stem."""
    for key in (str(path), path.name, path.stem):
        if key in table:
            return table[key]
    return []


def masks_of(path: Path, folder: Path, names: Sequence[str]) -> dict[Any, Path]:
    """The mask files of the image at ``path`` in ``folder``: ``<stem>.png`` (its one object) and
    ``<stem>.<name>.png`` for each name (label or text; also its file-name-safe form)."""
    from heatmap.outputs import slug

    found: dict[Any, Path] = {}
    single = folder / f"{path.stem}.png"
    if single.is_file():
        found[None] = single
    for name in names:
        for spelled in dict.fromkeys((name, slug(name))):
            candidate = folder / f"{path.stem}.{spelled}.png"
            if candidate.is_file():
                found[name] = candidate
                break
    return found
