"""ROAD (evaluation/road.py, docs/road.md), worked out by hand and by an independent dense solve.

The imputation: single removed pixels inside, on an edge and in a corner
against their weighted means written out as fractions; two coupled pixels
against a 2x2 system solved here; whole masks against a dense float64
matrix built pixel by pixel from the stated weights (normalised form) and
against the authors' formulation of the same system (their offset list,
their signs: un-normalised, the out-of-image weights taken off the diagonal)
on an image with a hole at the border. The noise: only on removed pixels,
exactly ``noise_std * randn`` from the caller's generator, reproducible.

road_test: a fake scorer whose logits are the channel means of each copy,
so the hits follow from the imputed images; checked against the same
images built one by one, and the AUC against the trapezoid written out.

Tolerances: the imputation is float64 SciPy/NumPy (no torch kernel), so its
errors are rounding only; each tolerance below states the largest error
measured, natively and under ATEN_CPU_CAPABILITY=default (the same figures).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from heatmap.errors import HeatmapError
from heatmap.evaluation.measures import perturbed_counts
from heatmap.evaluation.road import NOISE_STD, noisy_linear_imputation, road_test

pytestmark = pytest.mark.numerics

# SciPy's sparse float64 solve against the hand-worked values and the dense NumPy solves: measured at most
# 1.0e-15 (the random 9x7 masks; 1.1e-16 on the hand-worked pixels), native and default kernels alike.
SOLVE_TOLERANCE = 1e-13
# (x + noise) - x against noise, float64 on values <= 1: measured at most 5.4e-17, both kernels.
NOISE_TOLERANCE = 1e-15

DIRECT, DIAGONAL = 1 / 6, 1 / 12


def ramp_image(height: int = 4, width: int = 4) -> torch.Tensor:
    """``[3, H, W]`` float64: channel 0 ``i / 15``, channel 1 ``i^2 / 225`` (i = the raster index), channel 2 0.5."""
    index = torch.arange(height * width, dtype=torch.float64).reshape(height, width)
    return torch.stack([index / 15, index ** 2 / 225, torch.full_like(index, 0.5)])


def mask(height: int, width: int, *pixels: tuple[int, int]) -> torch.Tensor:
    removed = torch.zeros(height, width, dtype=torch.bool)
    for row, col in pixels:
        removed[row, col] = True
    return removed


def dense_reference(image: torch.Tensor, removed: torch.Tensor) -> np.ndarray:
    """The imputation re-derived: per removed pixel, ``x_i - sum_j (w_j / W_i) y_j = 0`` over its
    in-image neighbours j (W_i their total weight), solved densely with NumPy; ``[C, H, W]``."""
    values = image.numpy().astype(np.float64)
    channels, height, width = values.shape
    unknowns = [(r, c) for r in range(height) for c in range(width) if removed[r, c]]
    variable = {pixel: i for i, pixel in enumerate(unknowns)}
    matrix = np.eye(len(unknowns))
    right = np.zeros((len(unknowns), channels))
    for i, (row, col) in enumerate(unknowns):
        neighbours = [(row + dr, col + dc, DIAGONAL if dr and dc else DIRECT)
                      for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr or dc)]
        inside = [(r, c, w) for r, c, w in neighbours if 0 <= r < height and 0 <= c < width]
        total = sum(w for _, _, w in inside)
        for r, c, w in inside:
            if (r, c) in variable:
                matrix[i, variable[(r, c)]] -= w / total
            else:
                right[i] += w / total * values[:, r, c]
    solution = np.linalg.solve(matrix, right)
    result = values.copy()
    for i, (row, col) in enumerate(unknowns):
        result[:, row, col] = solution[i]
    return result


# The authors' neighbour list, as road/imputations.py line 94 states it: ((row offset, col offset), weight).
AUTHORS_NEIGHBOURS = [((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
                      ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6)]


def authors_form_reference(image: torch.Tensor, removed: torch.Tensor) -> np.ndarray:
    """The same system in the authors' form: ``+w`` for a removed in-image neighbour, ``-w * v`` on the
    right for a known one, ``-(1 - the out-of-image weights)`` on the diagonal; dense NumPy solve."""
    values = image.numpy()
    channels, height, width = values.shape
    unknowns = [(r, c) for r in range(height) for c in range(width) if removed[r, c]]
    variable = {pixel: i for i, pixel in enumerate(unknowns)}
    matrix = np.zeros((len(unknowns), len(unknowns)))
    right = np.zeros((len(unknowns), channels))
    for i, (row, col) in enumerate(unknowns):
        diagonal = 1.0
        for (dr, dc), weight in AUTHORS_NEIGHBOURS:
            r, c = row + dr, col + dc
            if not (0 <= r < height and 0 <= c < width):
                diagonal -= weight
            elif (r, c) in variable:
                matrix[i, variable[(r, c)]] = weight
            else:
                right[i] -= weight * values[:, r, c]
        matrix[i, i] = -diagonal
    solution = np.linalg.solve(matrix, right)
    result = values.copy()
    for i, (row, col) in enumerate(unknowns):
        result[:, row, col] = solution[i]
    return result


def impute_exactly(image: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    return noisy_linear_imputation(image, removed, noise_std=0.0)


@pytest.mark.parametrize(("pixel", "expected"), [
    # inside: all 8 neighbours, total weight 1: a linear ramp is reproduced, i^2 gives (134/6 + 168/12) / 225
    ((1, 1), (5 / 15, 109 / 675, 0.5)),
    # corner: (0,1) and (1,0) at 1/6, (1,1) at 1/12, total 5/12: (2 v01 + 2 v10 + v11) / 5
    ((0, 0), ((2 * 1 + 2 * 4 + 5) / 5 / 15, (2 * 1 + 2 * 16 + 25) / 5 / 225, 0.5)),
    # edge: (0,0), (0,2), (1,1) at 1/6, (1,0), (1,2) at 1/12, total 2/3: (2 v00 + 2 v02 + 2 v11 + v10 + v12) / 8
    ((0, 1), ((2 * 0 + 2 * 2 + 2 * 5 + 4 + 6) / 8 / 15, (2 * 0 + 2 * 4 + 2 * 25 + 16 + 36) / 8 / 225, 0.5)),
])
def test_one_removed_pixel_is_the_weighted_mean_of_its_neighbours_in_the_image(pixel, expected):
    image = ramp_image()
    imputed = impute_exactly(image, mask(4, 4, pixel))
    assert imputed[:, pixel[0], pixel[1]].tolist() == pytest.approx(expected, abs=SOLVE_TOLERANCE)


def test_two_neighbouring_removed_pixels_are_solved_together():
    # (1,1) and (1,2) removed: x = a + y/6 and y = b + x/6, a and b their known neighbours' weighted sums
    # of i^2 / 225: a = (1 + 81 + 16) / 6 + (0 + 4 + 64 + 100) / 12, b = (4 + 100 + 49) / 6 + (1 + 9 + 81 + 121) / 12
    a = ((1 + 81 + 16) / 6 + (0 + 4 + 64 + 100) / 12) / 225
    b = ((4 + 100 + 49) / 6 + (1 + 9 + 81 + 121) / 12) / 225
    x, y = np.linalg.solve([[1, -DIRECT], [-DIRECT, 1]], [a, b])
    imputed = impute_exactly(ramp_image(), mask(4, 4, (1, 1), (1, 2)))
    assert imputed[1, 1, 1].item() == pytest.approx(x, abs=SOLVE_TOLERANCE)
    assert imputed[1, 1, 2].item() == pytest.approx(y, abs=SOLVE_TOLERANCE)
    # inside and surrounded, the symmetric stencil reproduces the ramp; the constant channel stays constant
    assert imputed[0, 1, 1:3].tolist() == pytest.approx([5 / 15, 6 / 15], abs=SOLVE_TOLERANCE)
    assert imputed[2, 1, 1:3].tolist() == pytest.approx([0.5, 0.5], abs=SOLVE_TOLERANCE)


def test_a_4x4_mask_matches_the_dense_solve_and_keeps_the_known_pixels_bit_for_bit():
    image = ramp_image()
    removed = mask(4, 4, (0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (3, 3), (3, 0), (2, 3))
    imputed = impute_exactly(image, removed)
    np.testing.assert_allclose(imputed.numpy(), dense_reference(image, removed), rtol=0, atol=SOLVE_TOLERANCE)
    assert torch.equal(imputed[:, ~removed], image[:, ~removed])
    assert not torch.equal(imputed[:, removed], image[:, removed])


@pytest.mark.parametrize("seed", range(20))
def test_random_masks_match_the_dense_solve(seed):
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(3, 9, 7, generator=generator, dtype=torch.float64)
    removed = torch.rand(9, 7, generator=generator) < 0.7
    removed[0, 0] = False  # something to impute from
    imputed = impute_exactly(image, removed)
    np.testing.assert_allclose(imputed.numpy(), dense_reference(image, removed), rtol=0, atol=SOLVE_TOLERANCE)
    assert torch.equal(imputed[:, ~removed], image[:, ~removed])


def test_a_hole_at_the_border_matches_the_authors_form_of_the_system():
    # a 3x3 block in the corner: (1,1) and (0,0) have no known neighbour at all, the rest touch the border
    image = torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    removed = mask(5, 6, *[(r, c) for r in range(3) for c in range(3)], (4, 5), (2, 5))
    imputed = impute_exactly(image, removed)
    np.testing.assert_allclose(imputed.numpy(), authors_form_reference(image, removed), rtol=0, atol=SOLVE_TOLERANCE)
    np.testing.assert_allclose(imputed.numpy(), dense_reference(image, removed), rtol=0, atol=SOLVE_TOLERANCE)
    # no special case for a pixel with no known neighbour: the weighted mean of its neighbours' imputed values
    around = imputed[:, 0:3, 0:3]
    weights = torch.tensor([[DIAGONAL, DIRECT, DIAGONAL], [DIRECT, 0, DIRECT], [DIAGONAL, DIRECT, DIAGONAL]],
                           dtype=torch.float64)
    assert (around * weights).sum(dim=(1, 2)).tolist() == pytest.approx(imputed[:, 1, 1].tolist(),
                                                                           abs=SOLVE_TOLERANCE)


def test_the_noise_is_the_generators_draws_on_the_removed_pixels_only():
    image = ramp_image()
    removed = mask(4, 4, (0, 0), (1, 1), (1, 2), (3, 2))
    exact = impute_exactly(image, removed)
    noisy = noisy_linear_imputation(image, removed, generator=torch.Generator().manual_seed(7))
    # the removed pixels in raster order, one draw per channel and pixel: randn [C, m] float64 times the std
    draws = NOISE_STD * torch.randn(3, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(noisy[:, removed] - exact[:, removed], draws, rtol=0, atol=NOISE_TOLERANCE)
    assert torch.equal(noisy[:, ~removed], image[:, ~removed])
    again = noisy_linear_imputation(image, removed, generator=torch.Generator().manual_seed(7))
    assert torch.equal(again, noisy)
    other = noisy_linear_imputation(image, removed, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(other[:, removed], noisy[:, removed])


def test_no_noise_is_the_deterministic_solution_and_draws_nothing():
    image = ramp_image()
    removed = mask(4, 4, (2, 1), (3, 3))
    generator = torch.Generator().manual_seed(11)
    state = generator.get_state()
    first = noisy_linear_imputation(image, removed, noise_std=0.0, generator=generator)
    assert torch.equal(generator.get_state(), state)
    assert torch.equal(first, noisy_linear_imputation(image, removed, noise_std=0.0))
    np.testing.assert_allclose(first.numpy(), dense_reference(image, removed), rtol=0, atol=SOLVE_TOLERANCE)


def test_the_result_is_a_new_tensor_in_the_images_dtype():
    image = ramp_image().float()
    original = image.clone()
    removed = mask(4, 4, (1, 1), (2, 2))
    imputed = impute_exactly(image, removed)
    assert imputed.dtype == torch.float32
    # solved in float64, rounded once to float32
    expected = torch.from_numpy(dense_reference(image.double(), removed)).float()
    assert torch.equal(imputed[:, removed], expected[:, removed])
    assert torch.equal(image, original)
    untouched = impute_exactly(image, torch.zeros(4, 4, dtype=torch.bool))
    assert torch.equal(untouched, image) and untouched.data_ptr() != image.data_ptr()


def test_nothing_left_to_impute_from_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="every pixel is removed"):
        impute_exactly(ramp_image(), torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool mask"):
        impute_exactly(ramp_image(), torch.ones(4, 3, dtype=torch.bool))


def test_without_scipy_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.sparse", None)
    monkeypatch.setitem(sys.modules, "scipy.sparse.linalg", None)
    with pytest.raises(HeatmapError, match="pip install scipy"):
        impute_exactly(ramp_image(), mask(4, 4, (1, 1)))


class ChannelMeanScorer:
    """What road_test needs of a PixelScorer: ``batch_size`` and ``logits`` ``[N, 3]`` = each copy's channel
    means; it records each batch's size and whether it arrived as an inference tensor."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.batches: list[int] = []
        self.inference: list[bool] = []

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        self.batches.append(pixels.shape[0])
        self.inference.append(pixels.is_inference())
        return pixels.double().mean(dim=(2, 3))


def two_half_image() -> torch.Tensor:
    """``[3, 8, 8]`` float32: channel 0 is 1 on the left half, channel 1 is 0.4, channel 2 is 0: class 0 wins
    (mean 0.5 against 0.4) while the left half is there."""
    image = torch.zeros(3, 8, 8)
    image[0, :, :4] = 1.0
    image[1] = 0.4
    return image


def test_road_test_matches_the_copies_built_one_by_one():
    image = two_half_image()
    columns = torch.arange(64) % 8
    order_most = torch.argsort(columns, stable=True)  # the left columns first
    order_least = torch.argsort(-columns, stable=True)  # the right columns first
    scorer = ChannelMeanScorer(batch_size=4)
    results = road_test(scorer, image, order_most, order_least, target=0, clean_hit=True,
                        generator=torch.Generator().manual_seed(5))

    generator = torch.Generator().manual_seed(5)  # the same draws: MoRF's 9 copies, then LeRF's
    expected = {}
    for name, order in (("morf", order_most), ("lerf", order_least)):
        curve = [1.0]
        for count in perturbed_counts(64):
            removed = torch.zeros(64, dtype=torch.bool)
            removed[order[:count]] = True
            copy = noisy_linear_imputation(image, removed.reshape(8, 8), generator=generator)
            curve.append(float(int(copy.double().mean(dim=(1, 2)).argmax()) == 0))
        expected[name] = curve
    assert results["morf"]["curve"] == expected["morf"]
    assert results["lerf"]["curve"] == expected["lerf"]
    # MoRF: removed left columns are imputed from the bright columns still there (channel 0 mean 0.5, at
    # p = 0.4 0.4765), until the whole left half is gone at p = 0.5 (32 pixels) and is imputed from the dark
    # right half (mean 0): class 0 lost. LeRF: the right half is imputed from the bright left half: kept.
    assert results["morf"]["curve"] == [1.0] * 5 + [0.0] * 5
    assert results["lerf"]["curve"] == [1.0] * 10
    # AUC = 100 * trapezoid over p = 0, 0.1, ..., 0.9 (measured error 0, both kernels)
    assert results["morf"]["auc"] == pytest.approx(100 * (4 * 0.1 + 0.05), abs=1e-9)
    assert results["lerf"]["auc"] == pytest.approx(100 * 0.9, abs=1e-9)
    assert scorer.batches == [4, 4, 1, 4, 4, 1] and all(scorer.inference)
    assert torch.equal(image, two_half_image())


def test_road_test_starts_from_the_clean_hit_and_is_reproducible():
    image = two_half_image()
    order = torch.arange(64)
    first = road_test(ChannelMeanScorer(3), image, order, order.flip(0), target=1, clean_hit=False,
                      generator=torch.Generator().manual_seed(9))
    second = road_test(ChannelMeanScorer(9), image, order, order.flip(0), target=1, clean_hit=False,
                       generator=torch.Generator().manual_seed(9))
    assert first == second
    assert first["morf"]["curve"][0] == 0.0 and first["lerf"]["curve"][0] == 0.0
    assert all(isinstance(v, float) for test in first.values() for v in [*test["curve"], test["auc"]])
