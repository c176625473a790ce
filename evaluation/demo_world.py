"""``heatmap eval --demo-world N``: freshly generated shapes-world scenes with their labels and masks.

The shipped benchmark that runs offline: each scene's objects are its labels
(a classifier's classes are the shapes; a CLIP's texts are the captions of
every colour and shape), and each object's exact mask is its mask. The scenes
are drawn as they are evaluated, so a world of a million scenes takes the
memory of one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from heatmap.demo.shapes_world import COLORS, SHAPES, Scene, SceneObject, iter_scenes
from heatmap.evaluation.data import EvalImage, image_masks


class DemoScenes:
    """The evaluation images of ``count`` scenes drawn from ``seed``, made one at a time as they are iterated.

    Its length is ``count``; each iteration draws the scenes again from the seed, the same scenes as
    :func:`~heatmap.demo.shapes_world.make_scenes` with the same arguments.
    """

    def __init__(self, count: int, seed: int, pixel_transform: Any, clip: bool,
                 num_objects: int | tuple[int, int] = (1, 3)) -> None:
        self.count, self.seed, self.pixel_transform, self.clip = count, seed, pixel_transform, clip
        self.num_objects = num_objects

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[EvalImage]:
        scenes = iter_scenes(self.count, seed=self.seed, num_objects=self.num_objects)
        for index, scene in enumerate(scenes):
            yield scene_image(scene, index, self.pixel_transform, self.clip,
                              name=f"demo-world seed {self.seed} scene")


@dataclass
class DemoWorld:
    """The scenes as evaluation images, and (for a CLIP) the candidate texts."""

    images: Union[list[EvalImage], DemoScenes]
    texts: list[str]


def every_caption() -> list[str]:
    """Every caption the world can hold, spelled as the scenes spell them."""
    return [SceneObject(shape, color, np.zeros((1, 1), bool), (0, 0, 1, 1)).caption
            for color in COLORS for shape in SHAPES]


def scene_image(scene: Scene, index: int, pixel_transform: Any, clip: bool, name: str = "scene") -> EvalImage:
    """One scene -> its evaluation image, labelled with its objects' shapes (a CLIP: captions), one mask each."""
    masks: dict[Any, np.ndarray] = {obj.caption if clip else obj.shape: obj.mask for obj in scene.objects}
    pixels = pixel_transform(scene.image.convert("RGB")).float()
    size = (pixels.shape[1], pixels.shape[2])
    return EvalImage(f"{name} {index}", pixels, list(masks),
                     image_masks(scene.image.size, pixel_transform, size, masks))


def scene_images(scenes: Sequence[Scene], pixel_transform: Any, clip: bool, name: str = "scene") -> DemoWorld:
    """Scenes -> evaluation images labelled with their objects' shapes (a CLIP: captions), one mask each."""
    images = [scene_image(scene, index, pixel_transform, clip, name) for index, scene in enumerate(scenes)]
    return DemoWorld(images, every_caption() if clip else [])


def demo_world(count: int, seed: int, pixel_transform: Any, clip: bool,
               num_objects: int | tuple[int, int] = (1, 3)) -> DemoWorld:
    """``count`` scenes drawn from ``seed`` (the objects of a scene are of distinct shapes), drawn lazily."""
    return DemoWorld(DemoScenes(count, seed, pixel_transform, clip, num_objects), every_caption() if clip else [])
