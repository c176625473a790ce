"""``heatmap eval --demo-world N``: freshly generated shapes-world scenes with their labels and masks.

The shipped benchmark that runs offline: each scene's objects are its labels
(a classifier's classes are the shapes; a CLIP's texts are the captions of
every colour and shape), and each object's exact mask is its mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from heatmap.demo.shapes_world import COLORS, SHAPES, SceneObject, make_scenes
from heatmap.evaluation.data import EvalImage, image_masks


@dataclass
class DemoWorld:
    """The scenes as evaluation images, and (for a CLIP) the candidate texts."""

    images: list[EvalImage]
    texts: list[str]


def demo_world(adapter: Any, count: int, seed: int, pixel_transform: Any, clip: bool,
               num_objects: tuple[int, int] = (1, 3)) -> DemoWorld:
    """``count`` scenes drawn from ``seed``; two objects of one label share one mask (their union)."""
    # every caption the world can hold, spelled as the scenes spell them
    texts = [SceneObject(shape, color, np.zeros((1, 1), bool), (0, 0, 1, 1)).caption
             for color in COLORS for shape in SHAPES] if clip else []
    images = []
    for index, scene in enumerate(make_scenes(count, seed=seed, num_objects=num_objects)):
        masks: dict[Any, np.ndarray] = {}
        for obj in scene.objects:
            name = obj.caption if clip else obj.shape
            masks[name] = masks[name] | obj.mask if name in masks else obj.mask
        pixels = pixel_transform(scene.image.convert("RGB")).float()
        size = (pixels.shape[1], pixels.shape[2])
        images.append(EvalImage(f"demo-world seed {seed} scene {index}", pixels, list(masks),
                                image_masks(scene.image.size, pixel_transform, size, masks)))
    return DemoWorld(images, texts)
