"""The protocols that run the model on perturbed copies of an image (docs/METHODS.md, "heatmap eval").

:class:`PixelScorer` is the model seen from [0, 1] pixel space: it normalises
each copy and returns its logits over the model's classes (a CLIP: over the
given texts), in batches under ``torch.inference_mode``. The perturbation
test and deletion/insertion build their copies of ONE image from its map's
pixel order and score them; nothing mixes images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from heatmap.evaluation.measures import (
    gaussian_blur,
    mean_auc,
    perturbation_auc,
    perturbed_counts,
    pixel_order,
    removed_counts,
)
from heatmap.models.protocols import is_classifier, is_image_text

if TYPE_CHECKING:
    from heatmap.models.protocols import Adapter, ClassifierAdapter, ImageTextAdapter


class PixelScorer:
    """The model as a function of pixel images in [0, 1]: ``[N, 3, H, W]`` -> logits ``[N, C]``.

    Args:
        adapter: the model's adapter: a classifier's (``texts`` None) or a CLIP's (``texts`` given).
        mean, std: the model's normalisation, per channel.
        texts: a CLIP's candidate texts (its "classes"); None for a classifier.
        batch_size: copies per forward pass.
    """

    def __init__(self, adapter: Adapter, mean: Sequence[float], std: Sequence[float],
                 texts: Sequence[str] | None = None, batch_size: int = 32) -> None:
        self.adapter = adapter
        self.batch_size = max(1, batch_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.texts = list(texts) if texts is not None else None
        self.text_embedding: torch.Tensor | None = None
        # the adapter as the kind the texts say it is: a CLIP scores embeddings, a classifier its logits
        self._image_text: ImageTextAdapter | None = None
        self._classifier: ClassifierAdapter | None = None
        if self.texts is not None:
            if not is_image_text(adapter):
                raise TypeError(f"{adapter.name} is a classifier: it is scored without texts")
            self._image_text = adapter
            with torch.inference_mode():
                self.text_embedding = adapter.text_embeddings(adapter.tokenize(self.texts))
        elif is_classifier(adapter):
            self._classifier = adapter
        else:
            raise TypeError(f"{adapter.name} is a CLIP model: it is scored against texts")

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """``[N, C]``: the model's probabilities: a softmax over classes or candidate texts, or each pair's
        sigmoid for a model that scores image-text pairs on their own (SigLIP)."""
        if self._image_text is not None and self._image_text.independent_texts:
            return logits.sigmoid()
        return logits.softmax(dim=1)

    def normalised(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(pixels - mean) / std`` on the model's device and dtype: what the model (and the explainer) reads."""
        values = (pixels.float() - self.mean) / self.std
        return values.to(device=self.adapter.device, dtype=self.adapter.dtype)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[N, C]`` float64 on the CPU, ``batch_size`` images per forward pass."""
        chunks = []
        with torch.inference_mode():
            for chunk in torch.split(pixels, self.batch_size):
                images = self.normalised(chunk)
                if self._classifier is not None:
                    output = self._classifier.logits(images)
                else:
                    assert self._image_text is not None and self.text_embedding is not None
                    output = self._image_text.score(self._image_text.image_embeddings(images), self.text_embedding)
                chunks.append(output.double().cpu())
        return torch.cat(chunks)

    def copies_logits(self, base: torch.Tensor, source: torch.Tensor, order: torch.Tensor,
                      counts: Sequence[int]) -> torch.Tensor:
        """Logits of copies of ``base`` whose first ``k`` pixels of ``order`` come from ``source``, per k.

        Only ``batch_size`` copies exist at a time.
        """
        flat_base, flat_source = base.reshape(base.shape[0], -1), source.reshape(source.shape[0], -1)
        results = []
        for start in range(0, len(counts), self.batch_size):
            copies = []
            for count in counts[start:start + self.batch_size]:
                copy = flat_base.clone()
                chosen = order[:count]
                copy[:, chosen] = flat_source[:, chosen]
                copies.append(copy.reshape(base.shape))
            results.append(self.logits(torch.stack(copies)))
        return torch.cat(results)


def perturbation_test(scorer: PixelScorer, pixels: torch.Tensor, scaled: torch.Tensor, target: int,
                      clean_hit: bool, tie_seed: str | None = None) -> dict[str, dict[str, Any]]:
    """The positive and negative perturbation tests of one image (Chefer et al. 2021).

    For p = 0.1 .. 0.9 the ``floor(p * H * W)`` pixels ranked highest by the
    map (positive) or by minus the map (negative) are set to 0 in every
    channel; a hit is a top-1 class equal to ``target``. The curve starts with
    the clean image's hit (p = 0). Ties in the map are broken by random orders
    drawn from ``tie_seed``, one for each test (:func:`~heatmap.evaluation.measures.pixel_order`).
    """
    black = torch.zeros_like(pixels)
    counts = perturbed_counts(scaled.numel())
    tests = {}
    for name, most_relevant_first in (("positive", True), ("negative", False)):
        order = pixel_order(scaled, most_relevant_first, None if tie_seed is None else f"{tie_seed}:{name}")
        logits = scorer.copies_logits(pixels, black, order, counts)
        curve = [float(clean_hit)] + [float(hit) for hit in (logits.argmax(dim=1) == target).tolist()]
        tests[name] = {"curve": curve, "auc": perturbation_auc(curve)}
    return tests


def deletion_insertion(scorer: PixelScorer, pixels: torch.Tensor, scaled: torch.Tensor,
                       target: int, tie_seed: str | None = None) -> dict[str, dict[str, Any]]:
    """RISE's deletion and insertion curves of one image: the target's probability at 101 points.

    Deletion sets the pixels to black in map order; insertion reveals them in
    map order on a blurred copy. Point i has ``floor(i * H * W / 100)`` pixels changed. Ties in the
    map are broken by a random order drawn from ``tie_seed``.
    """
    order = pixel_order(scaled, True, None if tie_seed is None else f"{tie_seed}:deletion-insertion")
    counts = removed_counts(scaled.numel())
    curves = {
        "deletion": scorer.copies_logits(pixels, torch.zeros_like(pixels), order, counts),
        "insertion": scorer.copies_logits(gaussian_blur(pixels), pixels, order, counts),
    }
    results = {}
    for name, logits in curves.items():
        curve = scorer.probabilities(logits)[:, target].tolist()
        results[name] = {"curve": curve, "auc": mean_auc(curve)}
    return results
