"""``heatmap.evaluate``: how far each method's maps can be trusted on a model and a set of images.

Per image: its clean logits (once), its targets (the model's top-1 class, or
the labels given), then per method ONE explanation for all its targets, each
map scaled as the overlay shows it, reused by every protocol
(docs/METHODS.md, "The evaluation protocols"). The CLI (``heatmap eval``)
runs on :class:`Evaluator`; :func:`summarise` makes the data set's figures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from heatmap.errors import UsageError
from heatmap.evaluation.data import EvalImage
from heatmap.evaluation.measures import (
    SegmentationCounts,
    SegmentationTotals,
    energy_in_mask,
    mean_auc,
    overlay_map,
    perturbation_auc,
    pointing_hit,
    segmentation_counts,
)
from heatmap.evaluation.protocols import PixelScorer, deletion_insertion, perturbation_test
from heatmap.models.protocols import is_classifier

if TYPE_CHECKING:
    from heatmap.explainers.driver import Driver
    from heatmap.models.protocols import Adapter

PROTOCOLS = ("perturbation", "deletion-insertion", "pointing", "energy-pointing", "segmentation")
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

    def as_json(self) -> dict[str, Any]:
        """The ``eval.jsonl`` line: keys of protocols not run are absent."""
        line: dict[str, Any] = {"input": self.input, "method": self.method, "target": self.target,
                                "label": self.label}
        for key in ("perturbation", "deletion", "insertion", "pointing", "energy_pointing"):
            value = getattr(self, key)
            if value is not None:
                line[key] = value
        if self.segmentation is not None:
            line["segmentation"] = {"pixel_accuracy": self.segmentation.pixel_accuracy,
                                    "iou": self.segmentation.iou, "ap": self.segmentation.ap}
        return line


def protocols_to_run(asked: Sequence[str] | None, have_masks: bool) -> list[str]:
    """The protocols asked for (checked), or every protocol the data allows.

    Raises:
        UsageError: for an unknown protocol, or a mask protocol without masks.
    """
    if not asked:
        return [p for p in PROTOCOLS if have_masks or p not in NEEDS_MASKS]
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
    """

    def __init__(self, adapter: Adapter, scorer: PixelScorer, methods: Sequence[str], protocols: Sequence[str],
                 target: TargetRule | str = "predicted", tolerance: int = 0,
                 options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        from heatmap.explainers.driver import Driver

        if target not in ("predicted", "label"):
            raise UsageError(f"unknown target rule {target!r}; use predicted or label")
        self.adapter, self.scorer = adapter, scorer
        options = options or {}
        self.drivers = {name: Driver(adapter, name, **options.get(name, {})) for name in methods}
        self.protocols = list(protocols)
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
        for name, driver in self.drivers.items():
            maps = self._maps(driver, normalised, [index for index, _, _ in targets])
            for (index, label, given), heatmap in zip(targets, maps, strict=True):
                # a mask is found by the label as given, its name, or its index (as text or number)
                mask = image.mask_for(given, label, str(index), index)
                lines.append(self._measure(image, name, index, label, overlay_map(heatmap, size), clean, mask))
            if on_method is not None:
                on_method(name)
        return lines

    def _maps(self, driver: Driver, normalised: torch.Tensor, targets: list[int]) -> list[torch.Tensor]:
        """One explanation of the image for all its targets: one raw map per target."""
        texts = self.scorer.texts
        if texts is not None:
            return list(driver.explain_texts(normalised, [texts[index] for index in targets]).maps[0])
        return list(driver.explain(normalised, torch.tensor([targets])).maps[0])

    def _measure(self, image: EvalImage, method: str, target: int, label: str | None, scaled: torch.Tensor,
                 clean: torch.Tensor, mask: np.ndarray | None) -> ImageEvaluation:
        line = ImageEvaluation(image.name, method, target, label)
        if "perturbation" in self.protocols:
            line.perturbation = perturbation_test(self.scorer, image.pixels, scaled, target,
                                                  clean_hit=int(clean.argmax()) == target)
        if "deletion-insertion" in self.protocols:
            curves = deletion_insertion(self.scorer, image.pixels, scaled, target)
            line.deletion, line.insertion = curves["deletion"], curves["insertion"]
        if mask is not None:
            if "pointing" in self.protocols:
                line.pointing = pointing_hit(scaled, mask, self.tolerance)
            if "energy-pointing" in self.protocols:
                line.energy_pointing = energy_in_mask(scaled, mask)
            if "segmentation" in self.protocols:
                line.segmentation = segmentation_counts(scaled, mask)
        return line


def summarise(lines: Sequence[ImageEvaluation]) -> dict[str, dict[str, Any]]:
    """Per method, the data set's figure of each protocol (and the mean curves).

    Perturbation: the mean hit curve and its AUC; deletion/insertion: the
    mean probability curve and its mean; pointing: the hit rate; energy: the
    mean share; segmentation: pixel accuracy and mIoU from counts summed over
    every image, mAP the mean of the images' APs. ``lines`` counts the (image,
    target) pairs each figure is over.
    """
    methods: dict[str, list[ImageEvaluation]] = {}
    for line in lines:
        methods.setdefault(line.method, []).append(line)
    summary: dict[str, dict[str, Any]] = {}
    for method, own in methods.items():
        figures: dict[str, Any] = {"lines": len(own)}
        for test in ("positive", "negative"):
            curves = [line.perturbation[test]["curve"] for line in own if line.perturbation is not None]
            if curves:
                curve = np.mean(curves, axis=0).tolist()
                figures[f"perturbation_{test}"] = {"auc": perturbation_auc(curve), "curve": curve}
        for name in ("deletion", "insertion"):
            curves = [getattr(line, name)["curve"] for line in own if getattr(line, name) is not None]
            if curves:
                curve = np.mean(curves, axis=0).tolist()
                figures[name] = {"auc": mean_auc(curve), "curve": curve}
        hits = [line.pointing for line in own if line.pointing is not None]
        if hits:
            figures["pointing"] = {"rate": float(np.mean(hits)), "pairs": len(hits)}
        energies = [line.energy_pointing for line in own if line.energy_pointing is not None]
        if energies:
            figures["energy_pointing"] = {"mean": float(np.mean(energies)), "pairs": len(energies)}
        totals = SegmentationTotals()
        for line in own:
            if line.segmentation is not None:
                totals.add(line.segmentation)
        if totals.pixels:
            figures["segmentation"] = totals.figures()
        summary[method] = figures
    return summary
