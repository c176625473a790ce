"""``heatmap eval --demo-world N``: freshly generated shapes-world scenes with their labels and masks.

The shipped benchmark that runs offline: each scene's objects are its labels
(a classifier's classes are the shapes; a CLIP's texts are the captions of
every colour and shape), and each object's exact mask is its mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from heatmap.demo.shapes_world import COLORS, SHAPES, Scene, SceneObject, make_scenes
from heatmap.evaluation.data import EvalImage, image_masks


@dataclass
class DemoWorld:
    """The scenes as evaluation images, and (for a CLIP) the candidate texts."""

    images: list[EvalImage]
    texts: list[str]


def every_caption() -> list[str]:
    """Every caption the world can hold, spelled as the scenes spell them."""
    return [SceneObject(shape, color, np.zeros((1, 1), bool), (0, 0, 1, 1)).caption
            for color in COLORS for shape in SHAPES]


def scene_images(scenes: Sequence[Scene], pixel_transform: Any, clip: bool, name: str = "scene") -> DemoWorld:
    """Scenes -> evaluation images labelled with their objects' shapes (a CLIP: captions), one mask each."""
    images = []
    for index, scene in enumerate(scenes):
        masks: dict[Any, np.ndarray] = {obj.caption if clip else obj.shape: obj.mask for obj in scene.objects}
        pixels = pixel_transform(scene.image.convert("RGB")).float()
        size = (pixels.shape[1], pixels.shape[2])
        images.append(EvalImage(f"{name} {index}", pixels, list(masks),
                                image_masks(scene.image.size, pixel_transform, size, masks)))
    return DemoWorld(images, every_caption() if clip else [])


def demo_world(count: int, seed: int, pixel_transform: Any, clip: bool,
               num_objects: int | tuple[int, int] = (1, 3)) -> DemoWorld:
    """``count`` scenes drawn from ``seed`` (the objects of a scene are of distinct shapes)."""
    return scene_images(make_scenes(count, seed=seed, num_objects=num_objects), pixel_transform, clip,
                        name=f"demo-world seed {seed} scene")
