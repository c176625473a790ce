"""The arithmetic of the evaluation protocols (docs/METHODS.md, "The evaluation protocols").

No model here: maps, masks and curves in, figures out. Every function works
on ONE image (the authors' perturbation script min-max scales over the whole
batch; that is a bug for batches over one, so nothing here mixes images).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

# The perturbation test's steps: p = 0 (the clean image), 0.1, ..., 0.9.
PERTURBATION_STEPS = tuple(round(0.1 * step, 1) for step in range(10))
# Deletion and insertion: 100 equal steps, so 101 points from nothing changed to everything.
DELETION_STEPS = 100
# Insertion's blurred start: a Gaussian of sigma = 5% of the image side.
BLUR_SIGMA_FRACTION = 0.05


def overlay_map(heatmap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The map as the overlay shows it: bilinear to ``size`` (align_corners=False), min-max to [0, 1].

    Args:
        heatmap: one raw map ``[h, w]`` (a patch grid, or pixel-level already).
        size: the model's input ``(H, W)``.

    Returns:
        ``[H, W]`` float64; a constant map gives zeros, never NaN.
    """
    values = heatmap.detach().to(torch.float64)
    if tuple(values.shape) != tuple(size):
        values = F.interpolate(values[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    low, high = values.min(), values.max()
    if not bool(high > low):
        return torch.zeros_like(values)
    return (values - low) / (high - low)


def pixel_order(scaled: torch.Tensor, most_relevant_first: bool = True, tie_seed: str | None = None) -> torch.Tensor:
    """The flat pixel indices ``[H * W]`` from the most relevant (or the least) on.

    Ties (equal values; a constant map is all ties) are broken by a random
    order drawn from ``tie_seed`` (:func:`seeded`), so a constant map removes
    its pixels in a random order, as a random map would; None keeps raster
    order (row by row).
    """
    key = -scaled.flatten() if most_relevant_first else scaled.flatten()
    if tie_seed is None:
        return torch.argsort(key, stable=True)
    shuffled = torch.randperm(key.numel(), generator=seeded(tie_seed))
    return shuffled[torch.argsort(key[shuffled], stable=True)]


def seeded(text: str) -> torch.Generator:
    """A CPU generator seeded from ``text`` (sha256): the same text, the same draws, in any process."""
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big"))


def is_constant(scaled: torch.Tensor) -> bool:
    """Whether a map scaled by :func:`overlay_map` was constant (all zeros: any other map reaches 1)."""
    return not bool(scaled.max() > scaled.min())


def perturbation_auc(curve: list[float]) -> float:
    """``100 * trapz(curve, p)`` over p = 0, 0.1, ..., 0.9 (the paper's AUC)."""
    return 100.0 * float(np.trapezoid(np.asarray(curve, dtype=np.float64), PERTURBATION_STEPS))


def mean_auc(curve: list[float]) -> float:
    """Deletion's and insertion's AUC: the mean of the curve's 101 points."""
    return float(np.mean(np.asarray(curve, dtype=np.float64)))


def removed_counts(pixels: int) -> list[int]:
    """Deletion/insertion: how many pixels are changed at each of the 101 points, ``floor(i * n / 100)``."""
    return [step * pixels // DELETION_STEPS for step in range(DELETION_STEPS + 1)]


def perturbed_counts(pixels: int) -> list[int]:
    """The perturbation test: ``floor(p * n)`` pixels at p = 0.1 .. 0.9 (p = 0 is the clean image).

    In integers: ``0.7 * 90`` is 62.999... in floating point, one pixel short.
    """
    return [step * pixels // 10 for step in range(1, 10)]


def gaussian_blur(image: torch.Tensor, sigma_fraction: float = BLUR_SIGMA_FRACTION) -> torch.Tensor:
    """A Gaussian blur of one ``[3, H, W]`` image, sigma = ``sigma_fraction`` of each side.

    Separable, the kernel cut at 4 sigma, the borders reflected (the image
    goes on beyond its edges as its mirror, so nothing darkens there).
    """
    blurred = image[None]
    for axis, side in ((2, image.shape[1]), (3, image.shape[2])):
        sigma = sigma_fraction * side
        radius = min(max(1, math.ceil(4 * sigma)), side - 1)
        offsets = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = (kernel / kernel.sum()).repeat(3, 1, 1, 1)  # one per channel
        if axis == 2:
            blurred = F.conv2d(F.pad(blurred, (0, 0, radius, radius), mode="reflect"),
                               kernel.reshape(3, 1, -1, 1), groups=3)
        else:
            blurred = F.conv2d(F.pad(blurred, (radius, radius, 0, 0), mode="reflect"),
                               kernel.reshape(3, 1, 1, -1), groups=3)
    return blurred[0]


def pointing_hit(scaled: torch.Tensor, mask: np.ndarray, tolerance: int = 0) -> bool:
    """Whether the map's maximum (the first in raster order) lies within ``tolerance`` pixels of the mask.

    A constant map points nowhere: a miss (its "maximum" would be any pixel).
    """
    if is_constant(scaled):
        return False
    flat = int(torch.argmax(scaled.flatten()))
    y, x = divmod(flat, scaled.shape[1])
    if tolerance <= 0:
        return bool(mask[y, x])
    rows, cols = np.nonzero(mask)
    return bool(rows.size) and bool(((rows - y) ** 2 + (cols - x) ** 2).min() <= tolerance ** 2)


def energy_in_mask(scaled: torch.Tensor, mask: np.ndarray) -> float:
    """The share of the min-max map's total mass inside the mask (0 for an all-zero map)."""
    values = scaled.cpu().numpy()
    total = float(values.sum())
    return float(values[mask].sum()) / total if total > 0 else 0.0


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """The average precision of ``scores`` ranking the True pixels of ``truth``.

    ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds, highest
    first (the definition scikit-learn's ``average_precision_score`` uses);
    NaN when nothing is True.
    """
    scores, truth = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(truth, dtype=bool).ravel()
    positives = int(truth.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, truth = scores[order], truth[order]
    last_of_each_score = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
    true_positives = np.cumsum(truth)[last_of_each_score]
    precision = true_positives / (last_of_each_score + 1)
    recall = true_positives / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass(frozen=True)
class SegmentationCounts:
    """One image's segmentation by its map thresholded at the map's mean.

    Attributes:
        correct, pixels: pixels labelled right, and all pixels.
        intersection, union: per class (background, object).
        ap: the average precision of the min-max map as a score for the mask.
    """

    correct: int
    pixels: int
    intersection: tuple[int, int]
    union: tuple[int, int]
    ap: float

    @property
    def pixel_accuracy(self) -> float:
        return self.correct / self.pixels

    @property
    def iou(self) -> float:
        """The mean over the two classes of this image's intersection over union."""
        return float(np.mean([i / u if u else 1.0 for i, u in zip(self.intersection, self.union, strict=True)]))


def segmentation_counts(scaled: torch.Tensor, mask: np.ndarray) -> SegmentationCounts:
    """Threshold the min-max map at its mean; count against ``mask`` (True = object)."""
    values = scaled.cpu().numpy()
    predicted = values > values.mean()
    truth = np.asarray(mask, dtype=bool)
    intersection = (int((~predicted & ~truth).sum()), int((predicted & truth).sum()))
    union = (int((~predicted | ~truth).sum()), int((predicted | truth).sum()))
    return SegmentationCounts(int((predicted == truth).sum()), truth.size, intersection, union,
                              average_precision(values, truth))


@dataclass
class SegmentationTotals:
    """The data set's segmentation figures: pixel accuracy and mIoU from counts summed over every
    image (as the authors' ``imagenet_seg_eval.py``), mAP the mean of the images' APs."""

    correct: int = 0
    pixels: int = 0
    intersection: list[int] = field(default_factory=lambda: [0, 0])
    union: list[int] = field(default_factory=lambda: [0, 0])
    aps: list[float] = field(default_factory=list)

    def add(self, counts: SegmentationCounts) -> None:
        self.correct += counts.correct
        self.pixels += counts.pixels
        for index in (0, 1):
            self.intersection[index] += counts.intersection[index]
            self.union[index] += counts.union[index]
        if not math.isnan(counts.ap):
            self.aps.append(counts.ap)

    def figures(self) -> dict[str, float]:
        nan = float("nan")
        return {"pixel_accuracy": self.correct / self.pixels if self.pixels else nan,
                "iou": float(np.mean([i / u for i, u in zip(self.intersection, self.union, strict=True)]))
                if all(self.union) else nan,
                "ap": float(np.mean(self.aps)) if self.aps else nan}
