"""The pointing game of one method on shapes-world scenes, through ``heatmap eval``'s protocol.

One target per object: its class (classifier) or its caption (CLIP); a hit
is a map whose maximum, on the map as the overlay shows it at the model's
input size, falls on the object's own pixels (docs/METHODS.md, "Pointing
game"). Scenes carry exact masks, so this needs no human judgement. The
training scripts record it, ``scripts/pointing_game.py`` prints the README's
table, the tests hold the demo models to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from heatmap.demo.shapes_world import Scene

if TYPE_CHECKING:
    from heatmap.models.protocols import Adapter


@dataclass(frozen=True)
class PointingResult:
    """Hits over (scene, object) pairs of one method."""

    method: str
    hits: int
    pairs: int

    @property
    def rate(self) -> float:
        return self.hits / self.pairs if self.pairs else float("nan")


def pointing_game(adapter: Adapter, scenes: Sequence[Scene], method: str, **options: Any) -> PointingResult:
    """Score ``method`` on ``scenes``, one target per object, with ``adapter``'s model.

    Args:
        adapter: a classifier adapter whose labels include the shape names, or
            a CLIP adapter (each object's caption is then its text).
        scenes: shapes-world scenes.
        method: a registered method's name.
        **options: the method's options (CLIP defaults for a CLIP).
    """
    from heatmap.evaluation.data import split_normalisation
    from heatmap.evaluation.demo_world import scene_images
    from heatmap.evaluation.evaluate import Evaluator
    from heatmap.evaluation.protocols import PixelScorer

    clip = len(adapter.towers) > 1
    pixel_transform, mean, std = split_normalisation(adapter.transform)
    world = scene_images(scenes, pixel_transform, clip)
    scorer = PixelScorer(adapter, mean, std, texts=world.texts if clip else None)
    evaluator = Evaluator(adapter, scorer, [method], ["pointing"], target="label", options={method: options})
    hits = [line.pointing for image in world.images for line in evaluator.evaluate(image)]
    return PointingResult(method, sum(bool(hit) for hit in hits), sum(hit is not None for hit in hits))
