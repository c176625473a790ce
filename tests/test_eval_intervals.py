"""What makes ``heatmap eval``'s figures something to bet on: intervals, paired differences, the random and centre
rows, constant maps, and scoring an earlier run's maps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import heatmap
from heatmap.evaluation.baselines import CENTRE_SIGMA, baseline_map
from heatmap.evaluation.data import split_normalisation
from heatmap.evaluation.demo_world import demo_world
from heatmap.evaluation.evaluate import content_key
from heatmap.evaluation.intervals import Ratios, interval, mean_of, resampling_weights
from heatmap.evaluation.measures import perturbed_counts, pixel_order
from helpers.console import console_script

ROOT = Path(__file__).resolve().parents[1]
SCENES = sorted((ROOT / "sample_images").glob("shapes_00*.png"))


# -- the bootstrap ------------------------------------------------------------------------------------------


def test_a_ratio_under_weights_is_worked_out_by_hand():
    # three images: values 1, 2 (one line each) and 3, 5 (two lines of the third image)
    figure = mean_of({0: [1.0], 1: [2.0], 2: [3.0, 5.0]}, 3)
    assert figure.point() == (1 + 2 + 3 + 5) / 4
    weights = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]])
    # image 0 twice + image 1: (1 + 1 + 2) / 3; the third image three times: 24 / 6
    assert figure.value(weights).tolist() == [4 / 3, 4.0, 11 / 4]
    # a mean of two ratios (mIoU): each summed over the drawn images, then averaged
    two = Ratios(np.array([[1.0, 3.0], [2.0, 0.0]]), np.array([[2.0, 4.0], [4.0, 4.0]]))
    assert two.value(np.array([[1.0, 1.0]])).tolist() == [(4 / 6 + 2 / 8) / 2]
    assert math.isnan(mean_of({}, 2).point())  # no line: no figure, never a division by zero


def test_resampling_draws_n_images_with_replacement_from_a_fixed_seed():
    weights = resampling_weights(7, samples=5000, seed=3)
    assert weights.shape == (5000, 7) and (weights.sum(axis=1) == 7).all()
    assert np.array_equal(weights, resampling_weights(7, samples=5000, seed=3))
    assert not np.array_equal(weights, resampling_weights(7, samples=5000, seed=4))
    # every image is drawn once on average (7 draws of 7; the mean of 5,000 has sd 0.013): measured deviation
    # at most 0.030 over the 7 images, bound 0.1
    assert np.abs(weights.mean(axis=0) - 1.0).max() < 0.1


def test_the_interval_of_two_images_is_the_hand_worked_one():
    """Images worth 0 and 1: a sample's mean is 0 (1/4), 1/2 (1/2) or 1 (1/4); the 2.5th and 97.5th
    percentiles of many such samples are 0 and 1, and the middle of them 1/2."""
    figure = mean_of({0: [0.0], 1: [1.0]}, 2)
    values = figure.value(resampling_weights(2, samples=4000, seed=0))
    assert set(np.unique(values).tolist()) == {0.0, 0.5, 1.0}
    # shares measured 0.2448 / 0.5115 / 0.2438 over 4,000 samples; bound 0.03 (binomial sd 0.008)
    assert abs(float(np.mean(values == 0.5)) - 0.5) < 0.03
    assert interval(values) == (0.0, 1.0)


def test_the_interval_agrees_with_scipys_percentile_bootstrap():
    stats = pytest.importorskip("scipy.stats")
    values = np.random.default_rng(11).normal(size=80)
    figure = mean_of({image: [float(value)] for image, value in enumerate(values)}, len(values))
    ours = interval(figure.value(resampling_weights(len(values), samples=4000, seed=0)))
    theirs = stats.bootstrap((values,), np.mean, n_resamples=4000, method="percentile", random_state=0,
                             confidence_level=0.95).confidence_interval
    # two random draws of the same distribution: ends measured 0.0030 and 0.0009 apart (the standard error of
    # the mean is 0.097); bound 0.1, a third of a percentile interval's own sampling spread at 4,000 resamplings
    assert abs(ours[0] - theirs.low) < 0.1 and abs(ours[1] - theirs.high) < 0.1
    assert ours[0] < float(values.mean()) < ours[1]


# -- the rows every table is read against ------------------------------------------------------------------


def test_the_centre_row_is_a_gaussian_at_the_centre_with_a_quarter_side_sigma():
    centre = baseline_map("centre", (2, 2), (8, 12), "unused")
    rows, columns = np.meshgrid(np.arange(8) + 0.5, np.arange(12) + 0.5, indexing="ij")
    expected = np.exp(-0.5 * (((rows - 4) / (CENTRE_SIGMA * 8)) ** 2 + ((columns - 6) / (CENTRE_SIGMA * 12)) ** 2))
    assert np.abs(centre.numpy() - expected).max() < 1e-14  # measured 0 (native and portable kernels)
    first = baseline_map("random", (3, 4), (8, 12), "a")
    assert first.shape == (3, 4) and torch.equal(first, baseline_map("random", (3, 4), (8, 12), "a"))
    assert not torch.equal(first, baseline_map("random", (3, 4), (8, 12), "b"))


@pytest.fixture(scope="module")
def demo():
    return heatmap.load("demo", device="cpu")


@pytest.fixture(scope="module")
def world(demo):
    pixel_transform, _, _ = split_normalisation(demo.transform)
    return demo_world(4, 5, pixel_transform, clip=False)


def test_the_random_rows_curves_are_its_seeded_maps_scored_by_hand(demo, world):
    result = heatmap.evaluate(demo, torch.stack([image.pixels for image in world.images]), ["random"],
                              protocol="perturbation", seed=2, bootstrap=100)
    _, mean, std = split_normalisation(demo.transform)
    mean, std = torch.tensor(mean).reshape(1, 3, 1, 1), torch.tensor(std).reshape(1, 3, 1, 1)
    for image, line in zip(world.images, result, strict=True):
        pixels = image.pixels
        with torch.no_grad():
            target = int(demo.logits((pixels[None] - mean) / std).argmax())
            grid = demo.towers[0].grid((pixels[None] - mean) / std)
        random_map = baseline_map("random", grid, tuple(pixels.shape[1:]),
                                  f"2:{content_key(pixels)}:{target}:random")
        scaled = F.interpolate(random_map[None, None], size=pixels.shape[1:], mode="bilinear",
                               align_corners=False)[0, 0]
        scaled = (scaled - scaled.min()) / (scaled.max() - scaled.min())
        order = torch.argsort(-scaled.flatten(), stable=True)  # a random map has no ties to break
        copies = []
        for count in perturbed_counts(scaled.numel()):
            copy = pixels.clone().reshape(3, -1)
            copy[:, order[:count]] = 0.0
            copies.append(copy.reshape(pixels.shape))
        with torch.no_grad():
            hits = (demo.logits((torch.stack(copies) - mean) / std).argmax(dim=1) == target).tolist()
        assert line.method == "random" and line.target == target and not line.degenerate
        assert line.perturbation["positive"]["curve"] == [1.0, *map(float, hits)]


# -- constant maps -----------------------------------------------------------------------------------------


def test_ties_are_broken_by_a_seeded_order_and_each_test_draws_its_own():
    constant = torch.zeros(6, 5, dtype=torch.float64)
    positive = pixel_order(constant, True, "s:positive")
    negative = pixel_order(constant, False, "s:negative")
    assert sorted(positive.tolist()) == list(range(30)) and sorted(negative.tolist()) == list(range(30))
    assert positive.tolist() != negative.tolist()  # a constant map's two tests no longer coincide
    assert torch.equal(positive, pixel_order(constant, True, "s:positive"))
    assert pixel_order(constant, True).tolist() == list(range(30))  # no seed: raster order, as before
    ranked = torch.tensor([[0.5, 0.9, 0.5], [0.1, 0.5, 0.9]], dtype=torch.float64)
    order = pixel_order(ranked, True, "t").tolist()
    assert set(order[:2]) == {1, 5} and set(order[2:5]) == {0, 2, 4} and order[5] == 3  # ties only reordered


def test_a_constant_map_is_flagged_scored_like_a_random_one_and_points_nowhere(demo, world, tmp_path):
    """attention-gradcam's map is all zeros where no head's weighted attention is positive; such lines are
    flagged and counted, and their pointing game is a miss (their two perturbation tests draw different random
    orders: test_ties_are_broken_by_a_seeded_order_and_each_test_draws_its_own)."""
    images = [image for image in demo_world(12, 0, split_normalisation(demo.transform)[0], clip=False).images]
    masks = [image.masks for image in images]
    result = heatmap.evaluate(demo, torch.stack([image.pixels for image in images]), ["attention-gradcam"],
                              protocol=["perturbation", "pointing"], masks=masks, bootstrap=100)
    constant = [line for line in result if line.degenerate]
    assert constant, "the demo world at seed 0 has constant attention-gradcam maps (4 of its first 12)"
    for line in constant:
        assert line.as_json()["degenerate"] is True
        assert line.pointing in (False, None)
    summary = result.summary()["attention-gradcam"]
    assert summary["degenerate"] == len(constant)
    assert summary["pointing"]["misses_on_constant_maps"] == sum(line.pointing is False for line in constant)


# -- paired differences and the table ----------------------------------------------------------------------


def test_the_best_the_tied_and_the_paired_differences(demo, world):
    pixels = torch.stack([image.pixels for image in world.images])
    result = heatmap.evaluate(demo, pixels, ["chefer-generic", "rollout", "random"], protocol="perturbation",
                              bootstrap=300)
    comparisons = result.comparisons()
    positive = comparisons["perturbation_positive.auc"]
    summary = result.summary()
    points = {method: figures["perturbation_positive"]["auc"] for method, figures in summary.items()}
    assert positive["best"] == min(points, key=points.get) and positive["higher_is_better"] is False
    assert set(positive["differences"]) == {"chefer-generic - rollout", "chefer-generic - random",
                                            "rollout - random"}
    for name, found in positive["differences"].items():
        first, second = name.split(" - ")
        # the difference of the figures over every image (per-line AUC means: the AUC of the mean curve up to
        # round-off, measured 1.4e-14; bound 1e-9)
        assert found["difference"] == pytest.approx(points[first] - points[second], abs=1e-9)
        assert found["low"] <= found["high"]
        tied = found["low"] <= 0 <= found["high"]
        if positive["best"] in (first, second):
            other = second if first == positive["best"] else first
            assert (other in positive["tied_with_best"]) == tied
    for figures in summary.values():
        low, high = figures["perturbation_positive"]["intervals"]["auc"]
        assert low <= figures["perturbation_positive"]["auc"] <= high
        band = figures["perturbation_positive"]["band"]
        assert len(band) == 2 and all(lo <= hi for lo, hi in zip(*band, strict=True))
    text = result.table()
    assert max(len(line) for line in text.splitlines()) <= 100 and "±" in text and "*" in text
    assert json.loads(json.dumps(result.to_json()))["images"] == len(world.images)


# -- the command line ---------------------------------------------------------------------------------------


def test_eval_of_an_earlier_runs_maps_gives_the_figures_of_computing_them(tmp_path):
    run = tmp_path / "run"
    for method in ("chefer-generic", "rollout"):
        assert console_script(method, *SCENES, "-m", "demo", "-o", run, "-q").returncode == 0
    given, computed = tmp_path / "given", tmp_path / "computed"
    first = console_script("eval", "--model", "demo", "--maps", run, "--protocol", "perturbation", "--bootstrap", 200,
                           "-o", given, "-q")
    assert first.returncode == 0, first.stderr
    second = console_script("eval", *SCENES, "--model", "demo", "--method", "chefer-generic", "--method", "rollout",
                            "--protocol", "perturbation", "--bootstrap", 200, "-o", computed, "-q")
    assert second.returncode == 0, second.stderr
    scored, recomputed = (json.loads((folder / "eval.json").read_text()) for folder in (given, computed))
    assert scored["methods"] == recomputed["methods"]  # the same maps, curves, AUCs and intervals
    assert scored["comparisons"] == recomputed["comparisons"]
    assert set(scored["methods"]) == {"chefer-generic", "rollout", "random", "centre"}


def test_save_maps_writes_a_folder_that_maps_and_compare_read(tmp_path):
    out = tmp_path / "eval"
    result = console_script("eval", *SCENES[:2], "--model", "demo", "--method", "rollout", "--protocol",
                            "perturbation", "--save-maps", "--no-random", "--bootstrap", 50, "-o", out, "-q")
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in (out / "maps" / "manifest.jsonl").read_text().splitlines()]
    assert len(entries) == 2 and {entry["method"] for entry in entries} == {"rollout"}
    again = console_script("eval", "--model", "demo", "--maps", out / "maps", "--protocol", "perturbation",
                           "--no-random", "--bootstrap", 50, "-o", tmp_path / "again", "-q")
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "again" / "eval.json").read_text())["methods"] == \
        json.loads((out / "eval.json").read_text())["methods"]
    assert console_script("compare", out / "maps", out / "maps").returncode == 0


def test_sanity_and_road_reach_eval_json_and_the_table(tmp_path):
    out = tmp_path / "eval"
    result = console_script("eval", "--model", "demo", "--demo-world", 2, "--method", "chefer-generic", "--method",
                            "rollout", "--protocol", "sanity", "--protocol", "road", "--no-random", "--bootstrap",
                            50, "-o", out, env={"COLUMNS": "100"})
    assert result.returncode == 0, result.stderr
    methods = json.loads((out / "eval.json").read_text())["methods"]
    assert methods["rollout"]["sanity"]["random_class"] == 1.0  # class-agnostic: the same map for any class
    assert methods["chefer-generic"]["sanity"]["random_class"] < 1.0
    levels = [point["blocks_randomised_from"] for point in methods["chefer-generic"]["sanity"]["randomisation"]]
    assert levels == [3, 2, 1, 0]  # the demo classifier's four blocks, from the top down
    for figures in methods.values():
        assert {"road_morf", "road_lerf"} <= set(figures) and len(figures["road_morf"]["curve"]) == 10
    assert "sanity checks" in result.stdout and "MoRF" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 100


@pytest.mark.parametrize("extra", [["--method", "rollout"], ["--target", "label"], ["--demo-world", "2"]])
def test_maps_takes_the_earlier_runs_methods_and_targets(tmp_path, extra):
    run = tmp_path / "run"
    assert console_script("rollout", SCENES[0], "-m", "demo", "-o", run, "-q").returncode == 0
    result = console_script("eval", "--model", "demo", "--maps", run, *extra, "-o", tmp_path / "eval")
    assert result.returncode == 2 and "--maps scores the maps of an earlier run" in result.stderr
    assert not (tmp_path / "eval" / "eval.jsonl").exists()
