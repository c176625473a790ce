"""``heatmap.evaluate``: how far each method's maps can be trusted on a model and a set of images.

Per image: its clean logits (once), its targets (the model's top-1 class, or
the labels given), then per method ONE explanation for all its targets, each
map scaled as the overlay shows it, reused by every protocol
(docs/METHODS.md, "The evaluation protocols"). The CLI (``heatmap eval``)
runs on :class:`Evaluator`; :func:`summarise` makes the data set's figures.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from heatmap.errors import UsageError
from heatmap.evaluation.baselines import BASELINES, baseline_map
from heatmap.evaluation.data import EvalImage
from heatmap.evaluation.measures import (
    SegmentationCounts,
    energy_in_mask,
    is_constant,
    overlay_map,
    pixel_order,
    pointing_hit,
    seeded,
    segmentation_counts,
)
from heatmap.evaluation.protocols import PixelScorer, deletion_insertion, perturbation_test
from heatmap.evaluation.road import road_test
from heatmap.evaluation.summary import compare_methods, summarise
from heatmap.models.protocols import is_classifier

if TYPE_CHECKING:
    from heatmap.evaluation.given_maps import GivenMaps
    from heatmap.evaluation.sanity import SanityChecks
    from heatmap.models.protocols import Adapter

PROTOCOLS = ("perturbation", "deletion-insertion", "road", "pointing", "energy-pointing", "segmentation", "sanity")
# what runs when no protocol is named: ROAD and the sanity checks cost many more forward passes, so they are asked for
DEFAULT_PROTOCOLS = ("perturbation", "deletion-insertion", "pointing", "energy-pointing", "segmentation")
NEEDS_MASKS = frozenset({"pointing", "energy-pointing", "segmentation"})
TargetRule = Literal["predicted", "label"]


@dataclass
class ImageEvaluation:
    """One image, one method, one target: the curves and figures of every protocol run.

    A protocol not run (or without a mask for this target) is None.
    """

    input: str
    method: str
    target: int
    label: str | None
    perturbation: dict[str, dict[str, Any]] | None = None
    deletion: dict[str, Any] | None = None
    insertion: dict[str, Any] | None = None
    pointing: bool | None = None
    energy_pointing: float | None = None
    segmentation: SegmentationCounts | None = None
    road: dict[str, dict[str, Any]] | None = None
    sanity: dict[str, Any] | None = None
    degenerate: bool = False
    score: float | None = field(default=None, repr=False)  # the clean image's logit of the target (not a line key)
    raw_map: torch.Tensor | None = field(default=None, repr=False)  # kept for --save-maps (not a line key)

    def as_json(self) -> dict[str, Any]:
        """The ``eval.jsonl`` line: keys of protocols not run are absent; ``degenerate``: the map was constant."""
        line: dict[str, Any] = {"input": self.input, "method": self.method, "target": self.target,
                                "label": self.label, "degenerate": self.degenerate}
        for key in ("perturbation", "deletion", "insertion", "road", "pointing", "energy_pointing", "sanity"):
            value = getattr(self, key)
            if value is not None:
                line[key] = value
        if self.segmentation is not None:
            line["segmentation"] = {"pixel_accuracy": self.segmentation.pixel_accuracy,
                                    "iou": self.segmentation.iou, "ap": self.segmentation.ap}
        return line


def content_key(pixels: torch.Tensor) -> str:
    """A short sha256 of an image's float32 pixels: its identity for seeding, independent of its name."""
    data = pixels.detach().to(torch.float32).contiguous().cpu().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def protocols_to_run(asked: Sequence[str] | None, have_masks: bool) -> list[str]:
    """The protocols asked for (checked), or every protocol the data allows.

    Raises:
        UsageError: for an unknown protocol, or a mask protocol without masks.
    """
    if not asked:
        return [p for p in DEFAULT_PROTOCOLS if have_masks or p not in NEEDS_MASKS]
    unknown = [p for p in asked if p not in PROTOCOLS]
    if unknown:
        raise UsageError(f"unknown protocol {unknown[0]!r}; use one of {', '.join(PROTOCOLS)}")
    missing = [p for p in asked if p in NEEDS_MASKS and not have_masks]
    if missing:
        raise UsageError(f"--protocol {missing[0]} needs object masks: give --masks DIR (or use --demo-world)")
    return list(dict.fromkeys(asked))


class Evaluator:
    """Runs the protocols for one model on one image at a time.

    Args:
        adapter: the model's adapter.
        scorer: the model from pixel space (its normalisation, its texts for a CLIP).
        methods: method names; each is checked against the model before any work.
        protocols: from :data:`PROTOCOLS`.
        target: ``"predicted"`` (the model's top-1 class, or best text) or
            ``"label"`` (each of the image's labels); checked here, so any string is taken.
        tolerance: the pointing game's tolerance in pixels (0: the maximum must be on the mask).
        options: per method, its options (default: the method's defaults).
        seed: seeds the random maps (``random``), the tie-breaks of the pixel rankings, ROAD's noise,
            the sanity checks' randomised models and other classes, per image and target (never
            depending on the other images).
        given: an earlier run's maps (``--maps``): scored instead of computed, for the targets that run explained.

    ``methods`` may name the baselines of ``heatmap.evaluation.baselines``
    (``random``, ``centre``): maps that need no model, scored like the others.
    """

    def __init__(self, adapter: Adapter, scorer: PixelScorer, methods: Sequence[str], protocols: Sequence[str],
                 target: TargetRule | str = "predicted", tolerance: int = 0,
                 options: Mapping[str, Mapping[str, Any]] | None = None, seed: int = 0,
                 given: GivenMaps | None = None, keep_maps: bool = False) -> None:
        from heatmap.explainers.driver import Driver

        if target not in ("predicted", "label"):
            raise UsageError(f"unknown target rule {target!r}; use predicted or label")
        self.adapter, self.scorer = adapter, scorer
        options = options or {}
        self.methods = list(methods)
        self.given = given
        self.keep_maps = keep_maps
        computed = [name for name in methods if name not in BASELINES and given is None]
        self.drivers = {name: Driver(adapter, name, **options.get(name, {})) for name in computed}
        self.protocols = list(protocols)
        self.seed = seed
        self.sanity: SanityChecks | None = None
        if "sanity" in self.protocols:
            from heatmap.evaluation.sanity import SanityChecks

            checked = [name for name in methods if name not in BASELINES]
            self.sanity = SanityChecks(adapter, checked, options, seed)
        self.target = target
        self.tolerance = tolerance

    def targets(self, image: EvalImage, logits: torch.Tensor) -> list[tuple[int, str | None, Any]]:
        """``(index, label, as given)`` of each target of ``image`` (as given: the label the user wrote, or None)."""
        texts = self.scorer.texts
        if self.target == "predicted":
            index = int(logits.argmax())
            return [(index, texts[index] if texts is not None else self.adapter.label(index), None)]
        if not image.labels:
            raise UsageError(f"{image.name}: --target label needs labels for every image (--labels FILE)")
        targets: dict[int, tuple[int, str | None, Any]] = {}
        for label in image.labels:
            if texts is not None:
                if str(label) not in texts:
                    raise UsageError(f"{image.name}: its label {label!r} is not one of the texts")
                index = texts.index(str(label))
                targets.setdefault(index, (index, str(label), label))
            else:
                assert is_classifier(self.adapter)  # the scorer has no texts: a classifier (PixelScorer checks)
                index = self.adapter.class_index(str(label))
                targets.setdefault(index, (index, self.adapter.label(index) or str(label), label))
        return list(targets.values())

    def evaluate(self, image: EvalImage, on_method: Callable[[str], None] | None = None) -> list[ImageEvaluation]:
        """Every method's lines for ``image`` (one per target); ``on_method`` is called after each method."""
        clean = self.scorer.logits(image.pixels[None])[0]
        targets = self.targets(image, clean)
        normalised = self.scorer.normalised(image.pixels[None])
        size = (image.pixels.shape[1], image.pixels.shape[2])
        lines = []
        for name in self.methods:
            own_targets = targets if self.given is None or name in BASELINES else self._given_targets(image, name)
            maps = self._maps(name, image, normalised, [index for index, _, _ in own_targets])
            for (index, label, given), heatmap in zip(own_targets, maps, strict=True):
                # a mask is found by the label as given, its name, or its index (as text or number)
                mask = image.mask_for(given, label, str(index), index)
                line = self._measure(image, name, index, label, overlay_map(heatmap, size), clean, mask)
                line.score = float(clean[index])
                if self.keep_maps:
                    line.raw_map = heatmap.detach().float().cpu()
                lines.append(line)
            if on_method is not None:
                on_method(name)
        if self.sanity is not None:
            self._sanity(image, normalised, lines, classes=int(clean.shape[0]))
        return lines

    def _given_targets(self, image: EvalImage, method: str) -> list[tuple[int, str | None, Any]]:
        """The targets the earlier run explained for ``image`` (``--maps``), as :meth:`targets` gives them."""
        assert self.given is not None
        return [(index, label, label) for index, label in self.given.targets_for(image.name, method)]

    def _sanity(self, image: EvalImage, normalised: torch.Tensor, lines: list[ImageEvaluation], classes: int) -> None:
        """Both sanity checks for each target of ``image`` (every method at once), into its lines; the other
        class is drawn from the ``classes`` classes (a CLIP: texts) the model scores."""
        from heatmap.errors import UnsupportedModelError
        from heatmap.evaluation.sanity import other_target

        assert self.sanity is not None
        texts = self.scorer.texts
        for target in dict.fromkeys(line.target for line in lines if line.method not in BASELINES):
            if classes < 2:
                continue  # one class or text: no other to compare with
            other = other_target(classes, target, f"{content_key(image.pixels)}:{target}", self.seed)
            try:
                found = self.sanity.measure(normalised, target, other, texts)
            except UnsupportedModelError:
                continue  # a method refuses a randomised copy: no sanity figures for this image
            for line in lines:
                if line.target == target and line.method in found:
                    line.sanity = found[line.method]

    def seed_text(self, image: EvalImage, target: int) -> str:
        """What seeds an image's random draws for one target: the run's seed, the image's pixels and the target.

        The pixels, not the name: the same image draws the same in any batch, order or run, whatever it is called.
        """
        return f"{self.seed}:{content_key(image.pixels)}:{target}"

    def _maps(self, name: str, image: EvalImage, normalised: torch.Tensor, targets: list[int]) -> list[torch.Tensor]:
        """One explanation of the image for all its targets (a baseline's maps need no model; an earlier
        run's are read): a raw map each."""
        if name in BASELINES:
            size = (image.pixels.shape[1], image.pixels.shape[2])
            grid = self._grid(normalised)
            return [baseline_map(name, grid, size, f"{self.seed_text(image, target)}:{name}") for target in targets]
        if self.given is not None:
            return [heatmap for _, _, heatmap in self.given.maps_for(image.name, name)]
        driver = self.drivers[name]
        texts = self.scorer.texts
        if texts is not None:
            return list(driver.explain_texts(normalised, [texts[index] for index in targets]).maps[0])
        return list(driver.explain(normalised, torch.tensor([targets])).maps[0])

    def _grid(self, normalised: torch.Tensor) -> tuple[int, int]:
        """The image tower's patch grid (the random map's shape); a 16-pixel grid where a tower does not say."""
        tower: Any = self.adapter.towers[0]
        if callable(getattr(tower, "grid", None)):
            height, width = tower.grid(normalised)
            return int(height), int(width)
        return max(1, normalised.shape[-2] // 16), max(1, normalised.shape[-1] // 16)

    def _measure(self, image: EvalImage, method: str, target: int, label: str | None, scaled: torch.Tensor,
                 clean: torch.Tensor, mask: np.ndarray | None) -> ImageEvaluation:
        line = ImageEvaluation(image.name, method, target, label, degenerate=is_constant(scaled))
        ties = self.seed_text(image, target)
        if "perturbation" in self.protocols:
            line.perturbation = perturbation_test(self.scorer, image.pixels, scaled, target,
                                                  clean_hit=int(clean.argmax()) == target, tie_seed=ties)
        if "deletion-insertion" in self.protocols:
            curves = deletion_insertion(self.scorer, image.pixels, scaled, target, tie_seed=ties)
            line.deletion, line.insertion = curves["deletion"], curves["insertion"]
        if "road" in self.protocols:
            line.road = road_test(self.scorer, image.pixels, pixel_order(scaled, True, f"{ties}:morf"),
                                  pixel_order(scaled, False, f"{ties}:lerf"), target,
                                  clean_hit=int(clean.argmax()) == target, generator=seeded(f"{ties}:road-noise"))
        if mask is not None:
            if "pointing" in self.protocols:
                line.pointing = pointing_hit(scaled, mask, self.tolerance)
            if "energy-pointing" in self.protocols:
                line.energy_pointing = energy_in_mask(scaled, mask)
            if "segmentation" in self.protocols:
                line.segmentation = segmentation_counts(scaled, mask)
        return line


__all__ = ["NEEDS_MASKS", "PROTOCOLS", "Evaluator", "ImageEvaluation", "compare_methods", "protocols_to_run",
           "summarise"]
