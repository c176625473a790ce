"""How sure a figure is: 95% bootstrap intervals over images, and paired differences between methods.

Every figure of ``heatmap eval`` is a ratio of sums over images: a mean of
per-line values (an AUC, a hit, an energy share, an AP) is the sum of the
values over the sum of the line counts, and the segmentation's pixel
accuracy and mIoU are sums of pixel counts over sums of pixel counts. So a
figure is a :class:`Ratios` (per image, numerators and denominators; mIoU
averages two such ratios), and a bootstrap sample of the images is a vector
of weights (how often each image was drawn): the figure of the sample is
``sum(w * numerator) / sum(w * denominator)``, for every sample at once.

The images are resampled, not the lines: an image's targets stay together.
Paired differences resample the SAME images for both methods, so what the
two maps share (an easy image, a hard one) cancels out. Intervals are the
2.5th and 97.5th percentiles of the bootstrap figures (the percentile
method), from a fixed seed, so a rerun prints the same intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_SAMPLES = 1000
DEFAULT_SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class Ratios:
    """A figure as ratios of per-image sums: ``mean_k(sum_i w_i n_ki / sum_i w_i d_ki)``.

    Attributes:
        numerators, denominators: ``[K, images]`` float64; K = 1 for a mean,
            2 for mIoU (background, object). An image without the figure has 0 in both.
    """

    numerators: np.ndarray
    denominators: np.ndarray

    def value(self, weights: np.ndarray) -> np.ndarray:
        """The figure under each row of ``weights`` ``[samples, images]`` (NaN where a denominator is 0)."""
        numerator = weights @ self.numerators.T  # [samples, K]
        denominator = weights @ self.denominators.T
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)
        mean: np.ndarray = ratios.mean(axis=1)
        return mean

    def point(self) -> float:
        """The figure over every image once."""
        return float(self.value(np.ones((1, self.numerators.shape[1])))[0])


def mean_of(values: dict[int, list[float]], images: int) -> Ratios:
    """The ratios of a plain mean: per image index, the list of its lines' values."""
    numerators, denominators = np.zeros((1, images)), np.zeros((1, images))
    for image, own in values.items():
        finite = [value for value in own if not np.isnan(value)]
        numerators[0, image] = float(np.sum(finite)) if finite else 0.0
        denominators[0, image] = len(finite)
    return Ratios(numerators, denominators)


def resampling_weights(images: int, samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """``[samples, images]``: how often each image is drawn in each bootstrap sample (n draws with replacement)."""
    generator = np.random.default_rng(seed)
    drawn = generator.integers(0, images, size=(samples, images))
    weights = np.zeros((samples, images))
    np.add.at(weights, (np.arange(samples)[:, None], drawn), 1.0)
    return weights


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap values (NaN samples left out; NaNs when none is left)."""
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def figure_interval(figure: Ratios, weights: np.ndarray) -> tuple[float, float]:
    """The 95% interval of ``figure`` over the bootstrap samples ``weights``."""
    return interval(figure.value(weights))


def difference_interval(first: Ratios, second: Ratios, weights: np.ndarray) -> dict[str, float]:
    """``first - second`` over every image, and its interval with both resampled on the same images."""
    low, high = interval(first.value(weights) - second.value(weights))
    return {"difference": first.point() - second.point(), "low": low, "high": high}
