"""The Python entry to the evaluation: models, images, labels and masks as a user has them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch

from heatmap.errors import UsageError
from heatmap.evaluation.data import EvalImage, MaskLike, image_masks, split_normalisation
from heatmap.evaluation.evaluate import Evaluator, ImageEvaluation, TargetRule, protocols_to_run
from heatmap.evaluation.intervals import DEFAULT_SAMPLES, DEFAULT_SEED
from heatmap.evaluation.protocols import PixelScorer
from heatmap.evaluation.summary import compare_methods, summarise
from heatmap.evaluation.table import table_text

if TYPE_CHECKING:
    from heatmap.models.protocols import Adapter


def pixel_images(adapter: Adapter, images: Any, labels: Sequence[Any] | None,
                 masks: Sequence[Union[MaskLike, Mapping[Any, MaskLike], None]] | None,
                 mean: Sequence[float] | None, std: Sequence[float] | None
                 ) -> tuple[list[EvalImage], tuple[float, ...], tuple[float, ...]]:
    """Images (paths, PIL images, or a ``[B, 3, H, W]`` tensor in [0, 1]) -> :class:`EvalImage` s,
    with the normalisation the model expects."""
    from heatmap.inputs import load_image

    if mean is None or std is None:
        pixel_transform, model_mean, model_std = split_normalisation(adapter.transform)
        mean, std = mean or model_mean, std or model_std
    else:
        try:
            pixel_transform = split_normalisation(adapter.transform)[0]
        except UsageError:
            pixel_transform = adapter.transform
    count = len(images)
    for name, given in (("labels", labels), ("masks", masks)):
        if given is not None and len(given) != count:
            raise UsageError(f"got {len(given)} {name} for {count} images; give one per image")
    result = []
    for index in range(count):
        own_labels = [] if labels is None else labels[index]
        own_labels = list(own_labels) if isinstance(own_labels, (list, tuple)) else [own_labels]
        own_masks = None if masks is None else masks[index]
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise UsageError(f"images must be a [B, 3, H, W] tensor in [0, 1], got {tuple(images.shape)}")
            pixels = images[index].detach().float().cpu()
            size = (pixels.shape[2], pixels.shape[1])
            found = image_masks(size, pixel_transform, (pixels.shape[1], pixels.shape[2]), own_masks)
            result.append(EvalImage(f"image {index}", pixels, own_labels, found))
            continue
        item = images[index]
        picture = (item if hasattr(item, "convert") else load_image(item)).convert("RGB")
        pixels = pixel_transform(picture).float()
        found = image_masks(picture.size, pixel_transform, (pixels.shape[1], pixels.shape[2]), own_masks)
        name = str(item) if isinstance(item, (str, Path)) else f"image {index}"
        result.append(EvalImage(name, pixels, own_labels, found))
    return result, tuple(mean), tuple(std)


class EvalResult(Sequence[ImageEvaluation]):
    """An evaluation's per-image records (it is their sequence), with the data set's figures.

    Attributes:
        records: one :class:`ImageEvaluation` per image, method and target (``eval.jsonl``'s lines).
        samples, seed: the bootstrap's resamplings and seed.
    """

    def __init__(self, records: list[ImageEvaluation], samples: int = DEFAULT_SAMPLES,
                 seed: int = DEFAULT_SEED) -> None:
        self.records, self.samples, self.seed = records, samples, seed
        self._summary: dict[str, dict[str, Any]] | None = None
        self._comparisons: dict[str, dict[str, Any]] | None = None

    def __getitem__(self, index: Any) -> Any:
        return self.records[index]

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        methods = list(dict.fromkeys(record.method for record in self.records))
        return f"EvalResult({self.images} images, methods={methods!r:.80}, {len(self.records)} records)"

    @property
    def images(self) -> int:
        return len({record.input for record in self.records})

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per method, each figure with its 95% interval (``eval.json``'s ``methods``)."""
        if self._summary is None:
            self._summary = summarise(self.records, self.samples, self.seed)
        return self._summary

    def comparisons(self) -> dict[str, dict[str, Any]]:
        """Per figure, the best method, those tied with it, and every paired difference with its interval."""
        if self._comparisons is None:
            self._comparisons = compare_methods(self.records, self.samples, self.seed)
        return self._comparisons

    def table(self) -> str:
        """The tables ``heatmap eval`` prints, as text."""
        return table_text(self.summary(), self.comparisons(), self.images)

    def to_json(self) -> dict[str, Any]:
        """What ``eval.json`` holds of it: the figures, the comparisons, the bootstrap's settings."""
        return {"images": self.images, "methods": self.summary(), "comparisons": self.comparisons(),
                "bootstrap": {"samples": self.samples, "seed": self.seed, "level": 0.95}}

    def plot(self, title: str = "") -> Any:
        """``eval.png``'s figure (matplotlib), for a notebook."""
        from heatmap.evaluation.plot import curves_figure

        return curves_figure(self.summary(), title or f"{self.images} images")


def evaluate(model: Any, images: Any, method: Union[str, Sequence[str]],
             protocol: Union[str, Sequence[str], None] = None, target: TargetRule | None = None,
             labels: Sequence[Any] | None = None,
             masks: Sequence[Any] | None = None, texts: Sequence[str] | None = None,
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             batch_size: int = 32, tolerance: int = 0, processor: Any = None, seed: int = 0,
             bootstrap: int = DEFAULT_SAMPLES) -> EvalResult:
    """See :func:`heatmap.evaluate`."""
    from heatmap.models import resolve_adapter

    adapter = resolve_adapter(model, clip=texts is not None, processor=processor)
    clip = len(adapter.towers) > 1
    if clip and not texts:
        raise UsageError("a CLIP model is evaluated against candidate texts: pass texts=[...]")
    if not clip and texts is not None:
        raise UsageError(f"{adapter.name} is a classifier; texts= is for CLIP models")
    methods = [method] if isinstance(method, str) else list(method)
    protocols = protocols_to_run([protocol] if isinstance(protocol, str) else protocol, masks is not None)
    items, mean, std = pixel_images(adapter, images, labels, masks, mean, std)
    scorer = PixelScorer(adapter, mean, std, texts=texts, batch_size=batch_size)
    evaluator = Evaluator(adapter, scorer, methods, protocols, target=target or "predicted", tolerance=tolerance,
                          seed=seed)
    return EvalResult([line for item in items for line in evaluator.evaluate(item)], bootstrap, seed)
