"""How faithful the maps are: the pointing game on shapes-world scenes.

For each (scene, object) pair the target is the object's class (classifier)
or its caption (CLIP); a hit is a map whose maximum, upsampled to the picture
as the overlay is, falls on one of the object's own pixels. Scenes carry
exact masks, so this needs no human judgement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from heatmap.demo.shapes_world import Scene


@dataclass(frozen=True)
class PointingResult:
    """Hits over (scene, object) pairs of one method."""

    method: str
    hits: int
    pairs: int

    @property
    def rate(self) -> float:
        return self.hits / self.pairs if self.pairs else float("nan")


def peak_pixel(heatmap: np.ndarray, box: tuple[float, float, float, float],
               size: tuple[int, int]) -> tuple[int, int]:
    """``(x, y)`` in the picture of the maximum of ``heatmap`` upsampled bilinearly onto ``box``."""
    left, top, right, bottom = (round(v) for v in box)
    upsampled = np.asarray(Image.fromarray(heatmap.astype(np.float32), mode="F")
                           .resize((right - left, bottom - top), Image.BILINEAR))
    y, x = np.unravel_index(int(np.argmax(upsampled)), upsampled.shape)
    return min(max(left + x, 0), size[0] - 1), min(max(top + y, 0), size[1] - 1)


def pointing_game(adapter: Any, scenes: Sequence[Scene], method: str, **options: Any) -> PointingResult:
    """Score ``method`` on ``scenes``, one target per object, with ``adapter``'s model.

    Args:
        adapter: a classifier adapter whose labels include the shape names, or
            a CLIP adapter that knows the shapes world's captions (each
            object's caption is then its text).
        scenes: shapes-world scenes.
        method: a registered method's name.
        **options: the method's options (CLIP defaults for a CLIP).
    """
    from heatmap.explainers.driver import Driver
    from heatmap.pipeline import Pipeline

    driver = Driver(adapter, method, **options)
    hits = pairs = 0
    for scene in scenes:
        if not scene.objects:
            continue
        if driver.clip:
            records = Pipeline(driver, texts=[obj.caption for obj in scene.objects]).explain([scene.image])[0]
        else:
            targets = [[adapter.labels.index(obj.shape) for obj in scene.objects]]
            records = Pipeline(driver).explain([scene.image], targets)[0]
        for record, obj in zip(records, scene.objects, strict=True):
            assert record.box is not None
            x, y = peak_pixel(record.heatmap, record.box, scene.image.size)
            hits += bool(obj.mask[y, x])
            pairs += 1
    return PointingResult(method, hits, pairs)

