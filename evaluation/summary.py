"""The data set's figures of an evaluation, each with its 95% bootstrap interval, and how the methods compare.

:func:`summarise` gives, per method, the figure of each protocol (the mean
curves too), its interval (``intervals``, over images: see
``heatmap.evaluation.intervals``) and how many maps were constant
(``degenerate``). :func:`compare_methods` gives, for each figure, the paired
difference of every two methods with its interval, the best method, and the
methods tied with it (their difference's interval includes 0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np

from heatmap.evaluation.intervals import (
    DEFAULT_SAMPLES,
    DEFAULT_SEED,
    Ratios,
    difference_interval,
    figure_interval,
    interval,
    mean_of,
    resampling_weights,
)
from heatmap.evaluation.measures import SegmentationTotals, mean_auc, perturbation_auc

if TYPE_CHECKING:
    from heatmap.evaluation.evaluate import ImageEvaluation

# (summary key, figure key, higher is better): every figure that gets an interval and a ranking
FIGURES = (
    ("perturbation_positive", "auc", False),
    ("perturbation_negative", "auc", True),
    ("deletion", "auc", False),
    ("insertion", "auc", True),
    ("road_morf", "auc", False),
    ("road_lerf", "auc", True),
    ("pointing", "rate", True),
    ("energy_pointing", "mean", True),
    ("segmentation", "pixel_accuracy", True),
    ("segmentation", "iou", True),
    ("segmentation", "ap", True),
)

def _curve(line: ImageEvaluation, key: str) -> list[float] | None:
    """The curve of summary ``key`` in one line, or None when that protocol did not run for it."""
    if key.startswith("perturbation_"):
        return None if line.perturbation is None else line.perturbation[key.removeprefix("perturbation_")]["curve"]
    if key.startswith("road_"):
        return None if line.road is None else line.road[key.removeprefix("road_")]["curve"]
    found = getattr(line, key, None)
    return None if found is None else found["curve"]


CURVES: dict[str, Callable[[list[float]], float]] = {
    "perturbation_positive": perturbation_auc, "perturbation_negative": perturbation_auc,
    "deletion": mean_auc, "insertion": mean_auc, "road_morf": perturbation_auc, "road_lerf": perturbation_auc,
}


def _ratios(lines: Sequence[ImageEvaluation], key: str, figure: str, index: dict[str, int]) -> Ratios | None:
    """The figure as ratios of per-image sums (see ``heatmap.evaluation.intervals``), or None when absent."""
    images = len(index)
    values: dict[int, list[float]] = {}
    if key in CURVES:
        for line in lines:
            curve = _curve(line, key)
            if curve is not None:
                values.setdefault(index[line.input], []).append(CURVES[key](curve))
        return mean_of(values, images) if values else None
    if key in ("pointing", "energy_pointing"):
        for line in lines:
            value = getattr(line, key)
            if value is not None:
                values.setdefault(index[line.input], []).append(float(value))
        return mean_of(values, images) if values else None
    counts = [(index[line.input], line.segmentation) for line in lines if line.segmentation is not None]
    if not counts:
        return None
    if figure == "ap":
        for image, found in counts:
            values.setdefault(image, []).append(found.ap)
        return mean_of(values, images)
    rows = 1 if figure == "pixel_accuracy" else 2
    numerators, denominators = np.zeros((rows, images)), np.zeros((rows, images))
    for image, found in counts:
        if figure == "pixel_accuracy":
            numerators[0, image] += found.correct
            denominators[0, image] += found.pixels
        else:
            numerators[:, image] += found.intersection
            denominators[:, image] += found.union
    return Ratios(numerators, denominators)


def _by_method(lines: Sequence[ImageEvaluation]) -> dict[str, list[ImageEvaluation]]:
    methods: dict[str, list[ImageEvaluation]] = {}
    for line in lines:
        methods.setdefault(line.method, []).append(line)
    return methods


def _image_index(lines: Sequence[ImageEvaluation]) -> dict[str, int]:
    """Every image of the evaluation, numbered in the order first seen: the unit the bootstrap resamples."""
    return {name: number for number, name in enumerate(dict.fromkeys(line.input for line in lines))}


def summarise(lines: Sequence[ImageEvaluation], samples: int = DEFAULT_SAMPLES,
              seed: int = DEFAULT_SEED) -> dict[str, dict[str, Any]]:
    """Per method, the data set's figure of each protocol, with its 95% bootstrap interval.

    Perturbation and ROAD: the mean hit curve and its AUC; deletion/insertion:
    the mean probability curve and its mean; pointing: the hit rate; energy:
    the mean share; segmentation: pixel accuracy and mIoU from counts summed
    over every image, mAP the mean of the images' APs. Each figure's block has
    ``intervals`` ``{figure: [low, high]}`` (``samples`` resamplings of the
    images, ``seed``); curves have ``band``, the interval of each point.
    ``lines`` counts the (image, target) pairs; ``degenerate`` the constant maps among them.
    """
    index = _image_index(lines)
    weights = resampling_weights(len(index), samples, seed) if index else np.zeros((0, 0))
    summary: dict[str, dict[str, Any]] = {}
    for method, own in _by_method(lines).items():
        figures: dict[str, Any] = {"lines": len(own), "degenerate": sum(line.degenerate for line in own)}
        for key in CURVES:
            curves = [curve for line in own if (curve := _curve(line, key)) is not None]
            if curves:
                mean_curve = np.mean(curves, axis=0).tolist()
                figures[key] = {"auc": CURVES[key](mean_curve), "curve": mean_curve,
                                "band": _curve_band(own, key, index, weights)}
        hits = [line.pointing for line in own if line.pointing is not None]
        if hits:
            figures["pointing"] = {"rate": float(np.mean(hits)), "pairs": len(hits),
                                   "misses_on_constant_maps": sum(1 for line in own
                                                                  if line.pointing is False and line.degenerate)}
        energies = [line.energy_pointing for line in own if line.energy_pointing is not None]
        if energies:
            figures["energy_pointing"] = {"mean": float(np.mean(energies)), "pairs": len(energies)}
        totals = SegmentationTotals()
        for line in own:
            if line.segmentation is not None:
                totals.add(line.segmentation)
        if totals.pixels:
            figures["segmentation"] = totals.figures()
        checks = [line.sanity for line in own if line.sanity is not None]
        if checks:
            figures["sanity"] = _sanity_summary(checks)
        for key, figure, _ in FIGURES:
            ratios = _ratios(own, key, figure, index) if key in figures else None
            if ratios is not None:
                low, high = figure_interval(ratios, weights)
                figures[key].setdefault("intervals", {})[figure] = [low, high]
        summary[method] = figures
    return summary


def _sanity_summary(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over lines of the random-class similarity and of each randomisation level's correlation
    (NaN correlations, from constant maps, left out and counted)."""
    similarities = np.array([check["random_class"] for check in checks], dtype=np.float64)
    levels: dict[int, list[float]] = {}
    for check in checks:
        for point in check["randomisation"]:
            levels.setdefault(int(point["blocks_randomised_from"]), []).append(float(point["spearman"]))
    return {"random_class": _nanmean(similarities), "lines": len(checks),
            "undefined": int(np.isnan(similarities).sum()),
            "randomisation": [{"blocks_randomised_from": level, "spearman": _nanmean(np.array(values))}
                              for level, values in sorted(levels.items(), reverse=True)]}


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _curve_band(lines: Sequence[ImageEvaluation], key: str, index: dict[str, int],
                weights: np.ndarray) -> list[list[float]]:
    """``[low, high]`` curves: each point's 95% bootstrap interval over images."""
    curves: dict[int, list[list[float]]] = {}
    for line in lines:
        curve = _curve(line, key)
        if curve is not None:
            curves.setdefault(index[line.input], []).append(curve)
    points = len(next(iter(curves.values()))[0])
    numerators, denominators = np.zeros((points, len(index))), np.zeros((1, len(index)))
    for image, own in curves.items():
        numerators[:, image] = np.sum(own, axis=0)
        denominators[0, image] = len(own)
    with np.errstate(invalid="ignore", divide="ignore"):
        sampled = (weights @ numerators.T) / (weights @ denominators.T)  # [samples, points]
    bounds = [interval(sampled[:, point]) for point in range(points)]
    return [[low for low, _ in bounds], [high for _, high in bounds]]


def compare_methods(lines: Sequence[ImageEvaluation], samples: int = DEFAULT_SAMPLES,
                    seed: int = DEFAULT_SEED) -> dict[str, dict[str, Any]]:
    """For each figure, ``"<key>.<figure>"``: the best method, the methods tied with it, and the paired
    difference (with its 95% interval) of every two methods, the same images resampled for both."""
    index = _image_index(lines)
    if not index:
        return {}
    weights = resampling_weights(len(index), samples, seed)
    methods = _by_method(lines)
    result: dict[str, dict[str, Any]] = {}
    for key, figure, higher in FIGURES:
        ratios = {method: found for method, own in methods.items()
                  if (found := _ratios(own, key, figure, index)) is not None}
        points = {method: found.point() for method, found in ratios.items() if not np.isnan(found.point())}
        if not points:
            continue
        best = (max if higher else min)(points, key=lambda method: points[method])
        differences = {f"{first} - {second}": difference_interval(ratios[first], ratios[second], weights)
                       for first, second in combinations(ratios, 2)}
        tied = [method for method in points if method != best
                and _includes_zero(difference_interval(ratios[method], ratios[best], weights))]
        result[f"{key}.{figure}"] = {"higher_is_better": higher, "best": best, "tied_with_best": tied,
                                     "differences": differences}
    return result


def _includes_zero(found: dict[str, float]) -> bool:
    return bool(found["low"] <= 0.0 <= found["high"])
