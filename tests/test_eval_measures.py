"""The arithmetic of `heatmap eval`, worked out by hand (docs/METHODS.md, "The evaluation protocols").

evaluation/measures.py: the perturbation AUC (trapezoid over p = 0..0.9) and
deletion/insertion AUC (mean of 101 points), the pixel counts at each step,
the overlay map (bilinear, align_corners=False, then min-max), the pixel
order (ties in raster order), the pointing game with and without tolerance,
the energy pointing game, average precision with tied scores, the
segmentation counts and their data-set totals, and the Gaussian blur.

evaluation/protocols.py: PixelScorer.copies_logits, perturbation_test and
deletion_insertion, driven by a stub adapter whose model is a linear
classifier over the mean intensity of the image's four quadrants, so which
pixels matter, and what every logit is, is known exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from heatmap.evaluation.measures import (
    SegmentationTotals,
    average_precision,
    energy_in_mask,
    gaussian_blur,
    mean_auc,
    overlay_map,
    perturbation_auc,
    perturbed_counts,
    pixel_order,
    pointing_hit,
    removed_counts,
    segmentation_counts,
)
from heatmap.evaluation.protocols import PixelScorer, deletion_insertion, perturbation_test


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------------------
# 1. AUCs
# ---------------------------------------------------------------------------

def test_perturbation_auc_is_100_times_the_trapezoid_over_p_0_to_0_9():
    curve = [1, 1, 1, 0.5, 0.5, 0, 0, 0, 0, 0]
    # trapezoids of width 0.1, (y_i + y_{i+1}) / 2 * 0.1:
    #   1,1 -> 0.1 ; 1,1 -> 0.1 ; 1,.5 -> 0.075 ; .5,.5 -> 0.05 ; .5,0 -> 0.025 ; the rest 0
    #   sum = 0.35 -> AUC 35.0
    assert perturbation_auc(curve) == pytest.approx(35.0, abs=1e-9)
    # all ones: 9 intervals of width 0.1 (p runs to 0.9, not 1.0) -> 0.9 -> 90.0
    assert perturbation_auc([1.0] * 10) == pytest.approx(90.0, abs=1e-9)
    # a step at p = 0.1: 0.1 * (1 + 1) / 2 + 0.1 * (1 + 0) / 2 = 0.15 -> 15.0
    assert perturbation_auc([1, 1, 0, 0, 0, 0, 0, 0, 0, 0]) == pytest.approx(15.0, abs=1e-9)


def test_mean_auc_is_the_mean_of_the_101_points():
    # 51 ones then 50 zeros: 51 / 101 (NOT a trapezoid, which would give 0.505)
    curve = [1.0] * 51 + [0.0] * 50
    assert len(curve) == 101
    assert mean_auc(curve) == pytest.approx(51 / 101, abs=1e-12)
    # i / 100 for i = 0..100: sum = 100 * 101 / 2 / 100 = 50.5, / 101 = 0.5
    assert mean_auc([i / 100 for i in range(101)]) == pytest.approx(0.5, abs=1e-12)


# ---------------------------------------------------------------------------
# 2. pixel counts per step
# ---------------------------------------------------------------------------

def test_perturbed_counts_floor_p_times_n():
    # n = 37: 3.7, 7.4, 11.1, 14.8, 18.5, 22.2, 25.9, 29.6, 33.3 -> floors
    assert perturbed_counts(37) == [3, 7, 11, 14, 18, 22, 25, 29, 33]
    # n = 64: 6.4, 12.8, 19.2, 25.6, 32, 38.4, 44.8, 51.2, 57.6
    assert perturbed_counts(64) == [6, 12, 19, 25, 32, 38, 44, 51, 57]
    # n = 224 * 224 = 50176: 5017.6, 10035.2, 15052.8, 20070.4, 25088, 30105.6, 35123.2, 40140.8, 45158.4
    assert perturbed_counts(224 * 224) == [5017, 10035, 15052, 20070, 25088, 30105, 35123, 40140, 45158]


def test_perturbed_counts_exact_multiples_are_not_lost_to_rounding():
    # p * n is a whole number here, so floor(p * n) is that number:
    # n = 90 -> 9, 18, ..., 81; n = 300 * 300 = 90000 -> 9000, 18000, ..., 81000.
    # (In floating point 0.7 * 90 = 62.99999999999999, whose floor is 62, not 63.)
    assert perturbed_counts(90) == [9, 18, 27, 36, 45, 54, 63, 72, 81]
    assert perturbed_counts(300 * 300) == [9000 * k for k in range(1, 10)]


def test_removed_counts_101_points_floor_i_n_over_100():
    counts = removed_counts(37)
    assert len(counts) == 101
    assert counts[0] == 0 and counts[-1] == 37
    # floor(i * 37 / 100): i = 1 -> 0, 2 -> 0, 3 -> 1, 27 -> 9 (9.99), 28 -> 10 (10.36), 50 -> 18, 99 -> 36
    assert counts[1] == 0 and counts[2] == 0 and counts[3] == 1
    assert counts[27] == 9 and counts[28] == 10 and counts[50] == 18 and counts[99] == 36
    assert counts == [i * 37 // 100 for i in range(101)]
    # n = 64 at i = 25 and 75: 16 and 48 exactly
    assert removed_counts(64)[25] == 16 and removed_counts(64)[75] == 48


# ---------------------------------------------------------------------------
# 3. the overlay map
# ---------------------------------------------------------------------------

def test_overlay_map_bilinear_align_corners_false_then_min_max():
    raw = torch.tensor([[0.0, 4.0], [8.0, 16.0]])
    # align_corners=False, scale 2: output i reads source (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25,
    # clamped to the edge: weights on (source 0, source 1) = (1, 0), (.75, .25), (.25, .75), (0, 1).
    # along x: row [0, 4] -> [0, 1, 3, 4]; row [8, 16] -> [8, 10, 14, 16]
    # along y with the same weights:
    #   row 0: [0, 1, 3, 4]
    #   row 1: .75 * [0, 1, 3, 4] + .25 * [8, 10, 14, 16] = [2, 3.25, 5.75, 7]
    #   row 2: .25 * [0, 1, 3, 4] + .75 * [8, 10, 14, 16] = [6, 7.75, 11.25, 13]
    #   row 3: [8, 10, 14, 16]
    # min-max: min 0, max 16 -> divide by 16
    upsampled = torch.tensor([[0, 1, 3, 4],
                              [2, 3.25, 5.75, 7],
                              [6, 7.75, 11.25, 13],
                              [8, 10, 14, 16]], dtype=torch.float64)
    scaled = overlay_map(raw, (4, 4))
    assert scaled.dtype == torch.float64
    assert scaled.shape == (4, 4)
    torch.testing.assert_close(scaled, upsampled / 16, rtol=0, atol=1e-12)
    # the corners are the corner values (min-max scaled): 0, 4/16, 8/16, 1
    assert scaled[0, 0] == 0 and scaled[0, 3] == 0.25 and scaled[3, 0] == 0.5 and scaled[3, 3] == 1


def test_overlay_map_constant_gives_zeros_not_nan():
    scaled = overlay_map(torch.full((2, 2), 3.0), (4, 4))
    assert scaled.shape == (4, 4)
    assert not torch.isnan(scaled).any()
    assert torch.equal(scaled, torch.zeros(4, 4, dtype=torch.float64))


def test_overlay_map_at_target_size_is_only_min_max_scaled():
    raw = torch.tensor([[1.0, 3.0], [5.0, 9.0]])
    # (x - 1) / (9 - 1): [[0, 2/8], [4/8, 8/8]]
    torch.testing.assert_close(overlay_map(raw, (2, 2)),
                               torch.tensor([[0.0, 0.25], [0.5, 1.0]], dtype=torch.float64), rtol=0, atol=0)


# ---------------------------------------------------------------------------
# 4. the pixel order
# ---------------------------------------------------------------------------

def test_pixel_order_descending_and_ascending_ties_in_raster_order():
    scaled = torch.tensor([[0.5, 1.0, 0.5],
                           [0.2, 0.5, 1.0],
                           [0.2, 0.0, 0.5]], dtype=torch.float64)
    # flat: 0:.5 1:1 2:.5 3:.2 4:.5 5:1 6:.2 7:0 8:.5
    # most relevant first: 1.0 at 1, 5; 0.5 at 0, 2, 4, 8; 0.2 at 3, 6; 0.0 at 7
    assert pixel_order(scaled).tolist() == [1, 5, 0, 2, 4, 8, 3, 6, 7]
    # least relevant first (the negative test): 0.0 at 7; 0.2 at 3, 6; 0.5 at 0, 2, 4, 8; 1.0 at 1, 5
    assert pixel_order(scaled, most_relevant_first=False).tolist() == [7, 3, 6, 0, 2, 4, 8, 1, 5]


def test_pixel_order_many_ties_stay_in_raster_order():
    # 1000 equal pixels and one larger one: a non-stable sort may shuffle the ties.
    values = torch.zeros(1001, dtype=torch.float64)
    values[500] = 1.0
    order = pixel_order(values.reshape(7, 143)).tolist()
    assert order == [500] + [i for i in range(1001) if i != 500]
    order = pixel_order(values.reshape(7, 143), most_relevant_first=False).tolist()
    assert order == [i for i in range(1001) if i != 500] + [500]


# ---------------------------------------------------------------------------
# 5. the pointing game
# ---------------------------------------------------------------------------

def test_pointing_hit_with_and_without_tolerance():
    mask = np.zeros((5, 5), dtype=bool)
    mask[1:4, 0] = True                       # a vertical bar in column 0, rows 1..3
    scaled = torch.zeros(5, 5, dtype=torch.float64)
    scaled[2, 2] = 1.0                        # maximum at (2, 2): nearest mask pixel (2, 0), 2 px away
    assert not pointing_hit(scaled, mask)                 # tolerance 0: mask[2, 2] is False
    assert not pointing_hit(scaled, mask, tolerance=1)    # 2^2 = 4 > 1^2
    assert pointing_hit(scaled, mask, tolerance=2)        # 4 <= 2^2
    # inside the mask: a hit at tolerance 0
    inside = torch.zeros(5, 5, dtype=torch.float64)
    inside[3, 0] = 1.0
    assert pointing_hit(inside, mask)


def test_pointing_hit_tolerance_is_a_euclidean_distance():
    mask = np.zeros((5, 5), dtype=bool)
    mask[2, 0] = True
    scaled = torch.zeros(5, 5, dtype=torch.float64)
    scaled[4, 1] = 1.0   # dy = 2, dx = 1: squared distance 5 (Chebyshev distance 2)
    assert not pointing_hit(scaled, mask, tolerance=2)    # 5 > 4
    assert pointing_hit(scaled, mask, tolerance=3)        # 5 <= 9
    # an empty mask is never hit, whatever the tolerance
    assert not pointing_hit(scaled, np.zeros((5, 5), dtype=bool), tolerance=10)


def test_pointing_hit_uses_the_first_maximum_in_raster_order():
    mask = np.zeros((5, 5), dtype=bool)
    mask[2, 0] = True
    scaled = torch.zeros(5, 5, dtype=torch.float64)
    scaled[0, 4] = 1.0   # raster index 4, outside the mask
    scaled[2, 0] = 1.0   # raster index 10, inside the mask, the same value
    assert not pointing_hit(scaled, mask)   # the first maximum, (0, 4), counts
    scaled = torch.zeros(5, 5, dtype=torch.float64)
    scaled[2, 0] = 1.0   # raster index 10, inside
    scaled[4, 4] = 1.0   # raster index 24, outside
    assert pointing_hit(scaled, mask)


# ---------------------------------------------------------------------------
# 6. the energy pointing game
# ---------------------------------------------------------------------------

def test_energy_in_mask_share_of_the_mass():
    scaled = torch.tensor([[1.0, 0.5], [0.25, 0.25]], dtype=torch.float64)
    mask = np.array([[True, False], [False, True]])
    # total 1 + .5 + .25 + .25 = 2; inside 1 + .25 = 1.25; 1.25 / 2 = 0.625
    assert energy_in_mask(scaled, mask) == pytest.approx(0.625, abs=1e-12)
    # the complement: 0.75 / 2 = 0.375
    assert energy_in_mask(scaled, ~mask) == pytest.approx(0.375, abs=1e-12)


def test_energy_in_mask_all_zero_map_gives_zero():
    assert energy_in_mask(torch.zeros(3, 3, dtype=torch.float64), np.ones((3, 3), dtype=bool)) == 0.0


# ---------------------------------------------------------------------------
# 7. average precision
# ---------------------------------------------------------------------------

def test_average_precision_with_tied_scores_by_hand():
    scores = np.array([0.9, 0.8, 0.8, 0.8, 0.3, 0.1])
    truth = np.array([1, 0, 1, 1, 0, 1], dtype=bool)
    # 4 positives; thresholds at the distinct scores, highest first (all tied pixels enter together):
    #   >= .9: 1 pixel,  TP 1 -> P 1/1, R 1/4
    #   >= .8: 4 pixels, TP 3 -> P 3/4, R 3/4
    #   >= .3: 5 pixels, TP 3 -> P 3/5, R 3/4
    #   >= .1: 6 pixels, TP 4 -> P 4/6, R 1
    # AP = 1/4 * 1 + 1/2 * 3/4 + 0 * 3/5 + 1/4 * 4/6 = 1/4 + 3/8 + 1/6 = 19/24
    assert average_precision(scores, truth) == pytest.approx(19 / 24, abs=1e-12)
    # the tied pixels' order must not matter: the negative among the 0.8s first, or last,
    # and the whole thing shuffled, as a 2-D array
    assert average_precision(np.array([0.9, 0.8, 0.8, 0.8, 0.3, 0.1]),
                             np.array([1, 1, 1, 0, 0, 1], dtype=bool)) == pytest.approx(19 / 24, abs=1e-12)
    shuffled_scores = np.array([[0.8, 0.1, 0.9], [0.8, 0.3, 0.8]])
    shuffled_truth = np.array([[1, 1, 1], [0, 0, 1]], dtype=bool)
    assert average_precision(shuffled_scores, shuffled_truth) == pytest.approx(19 / 24, abs=1e-12)


def test_average_precision_without_ties_and_without_positives():
    # scores .4 .3 .2 .1, truth 0 1 0 1: thresholds P/R: (0/1, 0), (1/2, 1/2), (1/3, 1/2), (2/4, 1)
    # AP = 1/2 * 1/2 + 1/2 * 2/4 = 0.5
    assert average_precision(np.array([0.4, 0.3, 0.2, 0.1]),
                             np.array([0, 1, 0, 1], dtype=bool)) == pytest.approx(0.5, abs=1e-12)
    # a perfect ranking: 1.0
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0], dtype=bool)) == 1.0
    # all scores tied: one threshold, P = positives / n, R = 1 -> AP = 2 / 5
    assert average_precision(np.full(5, 0.5), np.array([1, 0, 0, 1, 0], dtype=bool)) == pytest.approx(0.4)
    assert math.isnan(average_precision(np.array([0.5, 0.1]), np.zeros(2, dtype=bool)))


def test_average_precision_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 8, size=200) / 7.0   # few distinct values: many ties
        truth = rng.random(200) < 0.3
        assert average_precision(scores, truth) == pytest.approx(
            metrics.average_precision_score(truth, scores), abs=1e-12)
        scores = rng.random(200)
        assert average_precision(scores, truth) == pytest.approx(
            metrics.average_precision_score(truth, scores), abs=1e-12)


# ---------------------------------------------------------------------------
# 8. segmentation
# ---------------------------------------------------------------------------

# Image 1: sum .0+.25+.5+.25+1+.75+.25+.5+1 = 4.5, mean 0.5 exactly; the two 0.5s are NOT above it.
MAP_1 = torch.tensor([[0.00, 0.25, 0.50],
                      [0.25, 1.00, 0.75],
                      [0.25, 0.50, 1.00]], dtype=torch.float64)
MASK_1 = np.array([[0, 0, 0],
                   [0, 1, 1],
                   [0, 1, 0]], dtype=bool)
# predicted (> 0.5): (1,1) (1,2) (2,2)
#   right: (1,1) (1,2) and the 5 background pixels outside both -> 7 of 9; wrong: (2,2), (2,1)
#   background: I = 5 (neither), U = 9 - 2 (both object) = 7;  object: I = 2, U = |{(1,1),(1,2),(2,2),(2,1)}| = 4
#   iou = (5/7 + 2/4) / 2 = 17/28
#   AP (3 positives): >= 1.0: {(1,1) T, (2,2) F} P 1/2 R 1/3; >= .75: +(1,2) T P 2/3 R 2/3;
#      >= .5: +(0,2) F, (2,1) T P 3/5 R 1; lower thresholds add no recall
#      = 1/3 * (1/2 + 2/3 + 3/5) = 53/90
# Image 2: mean 0.25, predicted (0,0); truth (0,0) (0,1)
MAP_2 = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
MASK_2 = np.array([[1, 1], [0, 0]], dtype=bool)
#   right 3 of 4 ((0,1) wrong); background I 2, U 3; object I 1, U 2; iou (2/3 + 1/2) / 2 = 7/12
#   AP: >= 1: P 1 R 1/2; >= 0: P 2/4 R 1 -> 1/2 + 1/2 * 1/2 = 3/4


def test_segmentation_counts_one_image_by_hand():
    counts = segmentation_counts(MAP_1, MASK_1)
    assert (counts.correct, counts.pixels) == (7, 9)
    assert counts.intersection == (5, 2)
    assert counts.union == (7, 4)
    assert counts.pixel_accuracy == pytest.approx(7 / 9)
    assert counts.iou == pytest.approx(17 / 28)
    assert counts.ap == pytest.approx(53 / 90, abs=1e-12)

    counts = segmentation_counts(MAP_2, MASK_2)
    assert (counts.correct, counts.pixels, counts.intersection, counts.union) == (3, 4, (2, 1), (3, 2))
    assert counts.iou == pytest.approx(7 / 12)
    assert counts.ap == pytest.approx(3 / 4)


def test_segmentation_totals_sum_the_counts_before_dividing():
    totals = SegmentationTotals()
    first, second = segmentation_counts(MAP_1, MASK_1), segmentation_counts(MAP_2, MASK_2)
    totals.add(first)
    totals.add(second)
    figures = totals.figures()
    # pixel accuracy from summed counts: (7 + 3) / (9 + 4) = 10/13 = 0.7692...
    #   not the mean of the images' values: (7/9 + 3/4) / 2 = 55/72 = 0.7639...
    assert figures["pixel_accuracy"] == pytest.approx(10 / 13)
    assert figures["pixel_accuracy"] != pytest.approx((first.pixel_accuracy + second.pixel_accuracy) / 2)
    # mIoU from summed counts: background 7/10, object 3/6 -> (0.7 + 0.5) / 2 = 0.6
    #   not the mean of the images' ious: (17/28 + 7/12) / 2 = 25/42 = 0.5952...
    assert figures["iou"] == pytest.approx(0.6)
    assert figures["iou"] != pytest.approx((first.iou + second.iou) / 2)
    # mAP: the mean of the images' APs: (53/90 + 3/4) / 2 = 241/360
    assert figures["ap"] == pytest.approx(241 / 360, abs=1e-12)


def test_segmentation_totals_leave_images_without_object_out_of_map_only():
    empty_mask = np.zeros((2, 2), dtype=bool)
    third = segmentation_counts(MAP_2, empty_mask)
    # predicted (0,0), no object: right 3 of 4; background I 3, U 4; object I 0, U 1; AP NaN
    assert (third.correct, third.pixels, third.intersection, third.union) == (3, 4, (3, 0), (4, 1))
    assert math.isnan(third.ap)
    totals = SegmentationTotals()
    for counts in (segmentation_counts(MAP_1, MASK_1), third, segmentation_counts(MAP_2, MASK_2)):
        totals.add(counts)
    figures = totals.figures()
    # its pixels still count: (7 + 3 + 3) / (9 + 4 + 4) = 13/17; background 10/14, object 3/7 -> mIoU 4/7
    assert figures["pixel_accuracy"] == pytest.approx(13 / 17)
    assert figures["iou"] == pytest.approx((10 / 14 + 3 / 7) / 2)
    # but its NaN AP is left out: still (53/90 + 3/4) / 2
    assert figures["ap"] == pytest.approx(241 / 360, abs=1e-12)
    assert totals.aps == [pytest.approx(53 / 90), pytest.approx(3 / 4)]


# ---------------------------------------------------------------------------
# 9. the Gaussian blur
# ---------------------------------------------------------------------------

def test_gaussian_blur_keeps_a_constant_image_constant():
    image = torch.tensor([0.2, 0.5, 0.9]).reshape(3, 1, 1).expand(3, 20, 30).clone()
    blurred = gaussian_blur(image)
    assert blurred.shape == image.shape
    # reflected borders: nothing darkens at the edges (zero padding would leave the border at ~0.6 of its value)
    torch.testing.assert_close(blurred, image, rtol=0, atol=1e-6)


def test_gaussian_blur_keeps_the_channel_means_of_a_random_image():
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    blurred = gaussian_blur(image)
    # measured: the largest channel-mean change is 3.7e-4 (seed 0; up to 3e-3 over seeds 0..4), from the
    # reflected borders; tolerance 5e-3
    assert (blurred.mean(dim=(1, 2)) - image.mean(dim=(1, 2))).abs().max() < 5e-3
    # and it does blur: the pixel spread falls from ~0.29 to ~0.05 (sigma = 1.6 px)
    assert blurred.std() < 0.5 * image.std()


def test_gaussian_blur_of_one_bright_pixel_is_a_symmetric_bump():
    image = torch.zeros(3, 21, 21, dtype=torch.float64)
    image[:, 10, 10] = 1.0
    blurred = gaussian_blur(image)
    # sigma = 0.05 * 21 = 1.05 px, radius ceil(4 * 1.05) = 5; the 1-D kernel is exp(-j^2 / (2 sigma^2)) / S,
    # S = sum over j = -5..5; the peak is the product of the two central weights, (1 / S)^2 < 1
    sigma = 0.05 * 21
    total = sum(math.exp(-0.5 * (j / sigma) ** 2) for j in range(-5, 6))
    assert blurred[0, 10, 10].item() == pytest.approx((1 / total) ** 2, rel=1e-9)
    assert blurred.max().item() < 1.0
    assert int(blurred[0].argmax()) == 10 * 21 + 10
    # one pixel away along an axis: exp(-1 / (2 sigma^2)) / S^2
    assert blurred[0, 10, 11].item() == pytest.approx(math.exp(-0.5 / sigma ** 2) / total ** 2, rel=1e-9)
    # symmetric: left-right, up-down, transposed; the bump fits inside the image, so the mass stays 1
    torch.testing.assert_close(blurred, blurred.flip(-1), rtol=0, atol=1e-15)
    torch.testing.assert_close(blurred, blurred.flip(-2), rtol=0, atol=1e-15)
    torch.testing.assert_close(blurred, blurred.transpose(-1, -2), rtol=0, atol=1e-15)
    assert blurred[0].sum().item() == pytest.approx(1.0, abs=1e-12)
    # the three channels are blurred alike
    assert torch.equal(blurred[0], blurred[1]) and torch.equal(blurred[0], blurred[2])


# ---------------------------------------------------------------------------
# 10. the protocols, with a stub adapter
# ---------------------------------------------------------------------------

class QuadrantClassifier(nn.Module):
    """Two classes from the mean intensity of the image's four quadrants (top-left, top-right,
    bottom-left, bottom-right): logit 0 = 4 * mean(top-left), logit 1 = 2.25. Records its batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([[4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]),
                                   requires_grad=False)
        self.bias = nn.Parameter(torch.tensor([0.0, 2.25]), requires_grad=False)
        self.batch_sizes: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(images.shape[0])
        side = images.shape[-1] // 2
        quadrants = nn.functional.avg_pool2d(images.mean(dim=1, keepdim=True), side).flatten(1)  # [N, 4]
        # row by row (no matrix product), so a row's logits cannot depend on the batch it came in
        return (quadrants[:, None, :] * self.weight).sum(dim=-1) + self.bias


class Flatten(nn.Module):
    """A "model" whose logits are the normalised pixels themselves: shows exactly what each copy was."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(images.shape[0])
        return images.flatten(1)


class StubAdapter:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.towers = [object()]  # one tower: a classifier (the scorer reads its logits only)
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def scorer(model: nn.Module, batch_size: int) -> PixelScorer:
    return PixelScorer(StubAdapter(model), mean=(0, 0, 0), std=(1, 1, 1), batch_size=batch_size)


# An 8x8 map (64 pixels) ranking the top-left quadrant (16 pixels, the ones the classifier reads) first.
TOP_LEFT = torch.zeros(8, 8, dtype=torch.bool)
TOP_LEFT[:4, :4] = True
RELEVANT_FIRST = torch.where(TOP_LEFT, 0.5 + torch.arange(64, dtype=torch.float64).reshape(8, 8) / 128,
                             torch.arange(64, dtype=torch.float64).reshape(8, 8) / 256)
assert RELEVANT_FIRST[TOP_LEFT].min() > RELEVANT_FIRST[~TOP_LEFT].max()


def test_copies_logits_replaces_the_first_k_pixels_of_the_order_in_every_channel():
    model = Flatten()
    base = torch.arange(12, dtype=torch.float32).reshape(3, 2, 2) + 1      # channel c, pixel i: 4c + i + 1
    source = -torch.ones(3, 2, 2)
    order = torch.tensor([3, 0, 2, 1])
    logits = scorer(model, batch_size=2).copies_logits(base, source, order, [0, 1, 3, 4, 2])
    assert logits.dtype == torch.float64
    b = base.flatten().tolist()  # [1, 2, 3, 4 | 5, 6, 7, 8 | 9, 10, 11, 12]
    expected = [
        b,                                                       # k = 0: untouched
        [1, 2, 3, -1, 5, 6, 7, -1, 9, 10, 11, -1],               # k = 1: pixel 3
        [-1, 2, -1, -1, -1, 6, -1, -1, -1, 10, -1, -1],          # k = 3: pixels 3, 0, 2
        [-1] * 12,                                               # k = 4: all
        [-1, 2, 3, -1, -1, 6, 7, -1, -1, 10, 11, -1],            # k = 2: pixels 3, 0
    ]
    assert logits.tolist() == expected
    assert model.batch_sizes == [2, 2, 1]     # only batch_size copies at a time
    assert torch.equal(base, torch.arange(12, dtype=torch.float32).reshape(3, 2, 2) + 1)  # base left alone


def test_perturbation_test_relevant_pixels_first_collapse_the_positive_curve():
    pixels = torch.ones(3, 8, 8)
    # clean: mean(top-left) = 1 -> logits (4, 2.25): class 0. Black pixels r of the 16 top-left:
    #   logit 0 = 4 * (16 - r) / 16 = (16 - r) / 4 > 2.25 iff r < 7
    #   (r = 6: 2.5, a hit; r = 7 would tie, but no count below gives r = 7)
    # counts floor(p * 64) = 6, 12, 19, 25, 32, 38, 44, 51, 57
    # positive (top-left first): r = 6 hit, then r >= 12: miss  -> [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    # negative (the other 48 first): r = 0 up to count 44, r = 3 at 51 (hit), r = 9 at 57 (miss)
    tests = perturbation_test(scorer(QuadrantClassifier(), 4), pixels, RELEVANT_FIRST, target=0, clean_hit=True)
    assert tests["positive"]["curve"] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert tests["negative"]["curve"] == [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    # AUCs: 100 * (0.1 * 1 + 0.1 * 0.5) = 15; 100 * (0.8 + 0.1 * 0.5) = 85
    assert tests["positive"]["auc"] == pytest.approx(15.0)
    assert tests["negative"]["auc"] == pytest.approx(85.0)
    # the reversed map swaps the roles: the positive test now removes the top-left last
    reverse = perturbation_test(scorer(QuadrantClassifier(), 4), pixels, 1 - RELEVANT_FIRST, target=0,
                                clean_hit=True)
    assert reverse["positive"]["curve"] == [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    assert reverse["negative"]["curve"] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    # the p = 0 point is the clean_hit given, not recomputed
    missed = perturbation_test(scorer(QuadrantClassifier(), 4), pixels, RELEVANT_FIRST, target=0, clean_hit=False)
    assert missed["positive"]["curve"][0] == 0 and missed["negative"]["curve"][0] == 0
    # and the hits are for the target: for class 1 they flip (p > 0)
    other = perturbation_test(scorer(QuadrantClassifier(), 4), pixels, RELEVANT_FIRST, target=1, clean_hit=False)
    assert other["positive"]["curve"] == [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]


@pytest.mark.parametrize("protocol", ["perturbation", "deletion_insertion"])
def test_batching_the_copies_changes_nothing(protocol):
    pixels = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    results = {}
    for batch_size in (1, 3, 32):
        model = QuadrantClassifier()
        if protocol == "perturbation":
            results[batch_size] = perturbation_test(scorer(model, batch_size), pixels, RELEVANT_FIRST, 0, True)
        else:
            results[batch_size] = deletion_insertion(scorer(model, batch_size), pixels, RELEVANT_FIRST, 0)
        assert max(model.batch_sizes) <= batch_size
    # 9 copies per perturbation curve, 101 per deletion/insertion curve
    assert len(results[1]["positive" if protocol == "perturbation" else "deletion"]["curve"]) == (
        10 if protocol == "perturbation" else 101)
    assert results[1] == results[3] == results[32]   # exactly: hits, probabilities and AUCs


def test_deletion_and_insertion_end_points():
    pixels = torch.zeros(3, 8, 8)
    pixels[:, :4, :4] = 1.0     # the top-left quadrant white, the rest black
    result = deletion_insertion(scorer(QuadrantClassifier(), 8), pixels, RELEVANT_FIRST, target=0)
    deletion, insertion = result["deletion"]["curve"], result["insertion"]["curve"]
    assert len(deletion) == len(insertion) == 101
    # softmax over (4 m, 2.25) for class 0 = sigmoid(4 m - 2.25), m = mean of the top-left quadrant
    clean = sigmoid(4 * 1.0 - 2.25)    # m = 1
    black = sigmoid(4 * 0.0 - 2.25)    # m = 0
    # the blurred start: sigma = 0.05 * 8 = 0.4 px, radius ceil(1.6) = 2, weights w0 = 1, w1 = exp(-1 / (2 * .16)),
    # w2 = exp(-4 / (2 * .16)), S = w0 + 2 w1 + 2 w2. Along one axis the step 1,1,1,1,0,0,0,0 becomes
    # 1, 1, 1 - w2/S, 1 - (w1 + w2)/S on the first four pixels (reflected at the left edge: all ones there),
    # so their mean is 1 - (w1 + 2 w2) / (4 S); the image is the product of two such steps: m = that squared.
    w1, w2 = math.exp(-1 / 0.32), math.exp(-4 / 0.32)
    s = 1 + 2 * w1 + 2 * w2
    blurred_mean = (1 - (w1 + 2 * w2) / (4 * s)) ** 2
    assert gaussian_blur(pixels)[:, :4, :4].mean().item() == pytest.approx(blurred_mean, abs=1e-6)
    blurred = sigmoid(4 * blurred_mean - 2.25)
    assert black < blurred < clean
    assert deletion[0] == pytest.approx(clean, abs=1e-6)
    assert deletion[-1] == pytest.approx(black, abs=1e-6)
    assert insertion[0] == pytest.approx(blurred, abs=1e-6)
    assert insertion[-1] == pytest.approx(clean, abs=1e-6)
    # deletion removes the top-left first: at point 25 (floor(25 * 64 / 100) = 16 pixels) it is all black
    assert deletion[25] == pytest.approx(black, abs=1e-6)
    # insertion reveals the top-left first: from point 25 on, the quadrant is clean; the rest of the image
    # is read by nothing, so the probability is the clean one
    assert insertion[25] == pytest.approx(clean, abs=1e-6)
    # AUC = the mean of the curve
    assert result["deletion"]["auc"] == pytest.approx(sum(deletion) / 101)
    assert result["insertion"]["auc"] == pytest.approx(sum(insertion) / 101)


def test_probabilities_are_the_models_own_softmax_or_pairwise_sigmoid():
    logits = torch.tensor([[2.0, -1.0, 0.5]], dtype=torch.float64)
    plain = scorer(Flatten(), batch_size=1)
    assert torch.equal(plain.probabilities(logits), logits.softmax(dim=1))
    # an image-text model scores candidate texts by a softmax over them (CLIP), or each image-text pair on
    # its own (SigLIP)
    texts = ["a", "b", "c"]
    clip = PixelScorer(StubImageText(Flatten(), independent=False), (0, 0, 0), (1, 1, 1), texts=texts)
    assert torch.equal(clip.probabilities(logits), logits.softmax(dim=1))
    siglip = PixelScorer(StubImageText(Flatten(), independent=True), (0, 0, 0), (1, 1, 1), texts=texts)
    assert torch.equal(siglip.probabilities(logits), logits.sigmoid())


class StubImageText(StubAdapter):
    """An image and a text tower; only what the scorer reads of texts (their count) is real."""

    name = "stub image-text model"

    def __init__(self, model: nn.Module, independent: bool) -> None:
        super().__init__(model)
        self.towers = [object(), object()]
        self.independent_texts = independent

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return torch.zeros(len(texts), 1, dtype=torch.long)

    def text_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.eye(len(tokens))
