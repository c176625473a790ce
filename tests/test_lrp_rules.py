"""The LRP rules of docs/METHODS.md on tensors small enough to work out by hand.

Every expected value below is written as the arithmetic it comes from, in
float64, so the check is exact up to one rounding per operation.
"""

from __future__ import annotations

import pytest
import torch

from heatmap.explainers.lrp import clone_relevance, residual_relevance, safe_divide, selection_relevance
from helpers.full_products import unnormalized_rollout

pytestmark = pytest.mark.numerics

EPS = 1e-9


def f64(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_safe_divide_adds_the_stabiliser_whatever_the_sign():
    a = f64(1.0, 1.0, 3.0, 2.0)
    b = f64(0.5, -0.5, 0.0, -EPS)
    # +1e-9 for both signs (not b's sign: -0.5 - 1e-9 would be the other rule);
    # b == 0 gives 0; a denominator that lands on 0 (b = -1e-9) becomes 1e-9
    expected = f64(1.0 / (0.5 + EPS), 1.0 / (-0.5 + EPS), 0.0, 2.0 / EPS)
    assert torch.equal(safe_divide(a, b), expected)


def test_clone_rule_divides_each_use_by_the_input():
    x = f64(2.0, -1.0, 0.0)
    skip = f64(1.0, 1.0, 5.0)
    branch = f64(0.5, -2.0, 7.0)
    # x * (R1 / (x + 1e-9) + R2 / (x + 1e-9)); a zero input keeps nothing
    expected = f64(2.0 * (1.0 / (2.0 + EPS) + 0.5 / (2.0 + EPS)),
                   -1.0 * (1.0 / (-1.0 + EPS) + -2.0 / (-1.0 + EPS)),
                   0.0)
    actual = clone_relevance(x, skip, branch)
    assert torch.equal(actual, expected)
    # not the plain sum: the stabiliser shows at 2.5e-10 relative, which LRP amplifies
    assert actual[0] != skip[0] + branch[0]
    # 1.5 * 2 / (2 + 1e-9): 7.5e-10 below 1.5; 1e-8 keeps over 10x
    assert abs(float(actual[0]) - 1.5) < 1e-8


def test_selection_rule_keeps_the_selected_token_share():
    selected = f64(3.0, -2.0, 0.0)
    relevance = f64(1.5, 1.0, 2.0)
    expected = f64(3.0 * (1.5 / (3.0 + EPS)), -2.0 * (1.0 / (-2.0 + EPS)), 0.0)
    assert torch.equal(selection_relevance(selected, relevance), expected)


def test_residual_rule_rescales_each_image_to_keep_its_total():
    # two images, two units each: a + b = z; R = relevance at z
    a = torch.tensor([[[1.0, 3.0]], [[2.0, -1.0]]], dtype=torch.float64)
    b = torch.tensor([[[1.0, 1.0]], [[2.0, 2.0]]], dtype=torch.float64)
    R = torch.tensor([[[2.0, 4.0]], [[1.0, 3.0]]], dtype=torch.float64)
    rel_a, rel_b = residual_relevance(a, b, R)
    # The 1e-9 stabiliser moves each value by up to 1.0e-9 relative (measured the same
    # native and portable, ATEN_CPU_CAPABILITY=default); rtol 1e-7 keeps over 90x and
    # a wrong rescaling moves them by order 1.
    # image 0: z = (2, 4); a's share R * a / z = (1, 3), b's (1, 1): sums 4 and 2,
    # total 6; rescaled by |4| / (|4| + |2|) * 6 / 4 = 1 and 2 / 6 * 6 / 2 = 1
    assert torch.allclose(rel_a[0], torch.tensor([[1.0, 3.0]], dtype=torch.float64), rtol=1e-7)
    assert torch.allclose(rel_b[0], torch.tensor([[1.0, 1.0]], dtype=torch.float64), rtol=1e-7)
    # image 1: z = (4, 1); a's share (0.5, -3) sums -2.5, b's (0.5, 6) sums 6.5;
    # total 4; factors (2.5 / 9 * 4) / -2.5 = -4/9 and (6.5 / 9 * 4) / 6.5 = 4/9
    assert torch.allclose(rel_a[1], torch.tensor([[0.5, -3.0]], dtype=torch.float64) * (-4 / 9), rtol=1e-7)
    assert torch.allclose(rel_b[1], torch.tensor([[0.5, 6.0]], dtype=torch.float64) * (4 / 9), rtol=1e-7)
    # each image keeps its own total, never the batch's
    assert torch.allclose((rel_a + rel_b).sum(dim=(1, 2)), R.sum(dim=(1, 2)), rtol=1e-7)


def test_transformer_attribution_product_is_not_row_normalised():
    first = torch.tensor([[[0.0, 1.0, 0.0],
                           [0.5, 0.0, 0.0],
                           [0.0, 0.0, 2.0]]], dtype=torch.float64)
    second = torch.tensor([[[1.0, 0.0, 0.0],
                            [0.0, 0.0, 1.0],
                            [0.0, 3.0, 0.0]]], dtype=torch.float64)
    # (I + second) @ (I + first):
    #   I + first  = [[1, 1, 0], [0.5, 1, 0], [0, 0, 3]]
    #   I + second = [[2, 0, 0], [0, 1, 1], [0, 3, 1]]
    #   row 0: 2 * [1, 1, 0]                      = [2, 2, 0]
    #   row 1: [0.5, 1, 0] + [0, 0, 3]            = [0.5, 1, 3]
    #   row 2: 3 * [0.5, 1, 0] + [0, 0, 3]        = [1.5, 3, 3]
    expected = torch.tensor([[[2.0, 2.0, 0.0],
                              [0.5, 1.0, 3.0],
                              [1.5, 3.0, 3.0]]], dtype=torch.float64)
    assert torch.equal(unnormalized_rollout([first, second]), expected)
    # one block: I + Abar itself
    assert torch.equal(unnormalized_rollout([first]), first + torch.eye(3, dtype=torch.float64))
