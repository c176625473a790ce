"""The pointing game of one method on shapes-world scenes, through ``heatmap eval``'s protocol.

One target per object: its class (classifier) or its caption (CLIP); a hit
is a map whose maximum, on the map as the overlay shows it at the model's
input size, falls on the object's own pixels (docs/METHODS.md, "Pointing
game"). Scenes carry exact masks, so this needs no human judgement. The
training scripts record it, ``scripts/pointing_game.py`` prints the README's
table and records every pair's result (``demo/pointing_game.json``), the
tests hold the demo models to it.
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


@dataclass(frozen=True)
class PointingPair:
    """One (scene, object) pair of the game.

    ``margin`` is the map's maximum on the object's pixels minus its maximum
    elsewhere, on the overlay's min-max scale: positive for a clear hit,
    negative for a clear miss; near zero, the last bits of the arithmetic
    decide (the first maximum in raster order wins a tie).
    """

    scene: int
    target: str
    hit: bool
    margin: float


def pointing_pairs(adapter: Adapter, scenes: Sequence[Scene], method: str, **options: Any) -> list[PointingPair]:
    """Every (scene, object) pair of ``method`` on ``scenes``, one target per object, with ``adapter``'s model.

    Args:
        adapter: a classifier adapter whose labels include the shape names, or
            a CLIP adapter (each object's caption is then its text).
        scenes: shapes-world scenes.
        method: a registered method's name.
        **options: the method's options (CLIP defaults for a CLIP).

    Returns:
        The pairs in scene order, then in the order of the scene's objects.
    """
    import torch

    from heatmap.evaluation.data import split_normalisation
    from heatmap.evaluation.demo_world import scene_images
    from heatmap.evaluation.evaluate import Evaluator
    from heatmap.evaluation.measures import overlay_map
    from heatmap.evaluation.protocols import PixelScorer

    clip = len(adapter.towers) > 1
    pixel_transform, mean, std = split_normalisation(adapter.transform)
    world = scene_images(scenes, pixel_transform, clip)
    scorer = PixelScorer(adapter, mean, std, texts=world.texts if clip else None)
    evaluator = Evaluator(adapter, scorer, [method], ["pointing"], target="label", options={method: options})
    pairs = []
    # Evaluator.evaluate's steps, keeping each map to measure how clear its hit or miss is
    for scene, image in enumerate(world.images):
        clean = scorer.logits(image.pixels[None])[0]
        targets = evaluator.targets(image, clean)
        size = (image.pixels.shape[1], image.pixels.shape[2])
        maps = evaluator._maps(method, image, scorer.normalised(image.pixels[None]), [index for index, _, _ in targets])
        for (index, label, given), heatmap in zip(targets, maps, strict=True):
            mask = image.mask_for(given, label, str(index), index)
            if mask is None:
                continue
            scaled = overlay_map(heatmap, size)
            line = evaluator._measure(image, method, index, label, scaled, clean, mask)
            on_object = torch.from_numpy(mask)
            inside = float(scaled[on_object].max()) if mask.any() else 0.0
            outside = float(scaled[~on_object].max()) if not mask.all() else 0.0
            pairs.append(PointingPair(scene, str(given), bool(line.pointing), inside - outside))
    return pairs


def pointing_game(adapter: Adapter, scenes: Sequence[Scene], method: str, **options: Any) -> PointingResult:
    """Score ``method`` on ``scenes``, one target per object, with ``adapter``'s model.

    Args:
        adapter: a classifier adapter whose labels include the shape names, or
            a CLIP adapter (each object's caption is then its text).
        scenes: shapes-world scenes.
        method: a registered method's name.
        **options: the method's options (CLIP defaults for a CLIP).
    """
    pairs = pointing_pairs(adapter, scenes, method, **options)
    return PointingResult(method, sum(pair.hit for pair in pairs), len(pairs))
