"""partial-lrp and the ORIGINAL LRP rules (the authors' layers_lrp.py), in float64.

The rules on 2-unit examples worked out by hand, then the method on tiny
random ViTs and CLIPs against ``helpers.lrp_reference`` run with the
original rules: ``mean_h((RA_{L-1})+)[q, P:]``.
"""

from __future__ import annotations

import pytest
import torch

import heatmap
from heatmap.explainers.lrp import linear_relevance_original, residual_relevance_original
from helpers.lrp_reference import ref_add_original, ref_linear_original, ref_lrp, relative_error
from helpers.models import random_images, tiny_vit

EPS = 1e-9
# Largest relative error against the float64 reference measured here: 3.1e-16;
# 1e-12 keeps a margin of over 1000x.
FLOAT64_TOLERANCE = 1e-12


def f64(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_original_linear_normalises_each_sign_part_on_its_own():
    # x = [2, -1], W = [[1, 3], [-2, 1]], R = [1, 0.5]
    #   x+ = [2, 0], x- = [0, -1];  W+ = [[1, 3], [0, 1]], W- = [[0, 0], [-2, 0]]
    #   Z+ = x+ W+^T = [2, 0];  Z- = x- W-^T = [0, 0]
    #   S+ = [1 / (2 + 1e-9), 0] (0 where Z+ == 0);  S- = [0, 0]
    #   R_x = x+ * (S+ W+) + x- * (S- W-) = [2 * 1 / (2 + 1e-9), 0]
    x, weight, R = f64(2.0, -1.0), f64([1.0, 3.0], [-2.0, 1.0]), f64(1.0, 0.5)
    assert torch.equal(linear_relevance_original(x, weight, R), f64(2.0 * (1.0 / (2.0 + EPS)), 0.0))
    # each part keeps all of R, so the total is not conserved:
    # x = [1, -1], W = [[1, -1]], R = [1]: Z+ = 1 * 1 = 1, Z- = (-1) * (-1) = 1
    #   R_x = [1 * 1 / (1 + 1e-9), (-1) * (1 / (1 + 1e-9)) * (-1)]: the relevance doubled
    doubled = linear_relevance_original(f64(1.0, -1.0), f64([1.0, -1.0]), f64(1.0))
    assert torch.equal(doubled, f64(1.0 / (1.0 + EPS), 1.0 / (1.0 + EPS)))
    assert abs(float(doubled.sum()) - 2.0) < 1e-8


def test_original_residual_add_is_not_rescaled():
    a, b, R = f64(1.0, 3.0), f64(1.0, -1.0), f64(2.0, 4.0)
    rel_a, rel_b = residual_relevance_original(a, b, R)
    # z = a + b = [2, 2]; each operand's share R * operand / (z + 1e-9)
    assert torch.equal(rel_a, f64(1.0 * (2.0 / (2.0 + EPS)), 3.0 * (4.0 / (2.0 + EPS))))
    assert torch.equal(rel_b, f64(1.0 * (2.0 / (2.0 + EPS)), -1.0 * (4.0 / (2.0 + EPS))))


def test_the_references_agree_with_the_hand_worked_rules():
    x, weight, R = f64([1.0, -1.0]), f64([1.0, -1.0]), f64([1.0])
    assert torch.allclose(ref_linear_original(x, weight, R), linear_relevance_original(x, weight, R), rtol=1e-15)
    a, b = f64(1.0, 3.0), f64(1.0, -1.0)
    for ours, theirs in zip(residual_relevance_original(a, b, f64(2.0, 4.0)),
                            ref_add_original(a, b, f64(2.0, 4.0)), strict=True):
        assert torch.equal(ours, theirs)


MODELS = {
    "class-token": (lambda: tiny_vit(), ("token", 0)),
    "4-prefix-tokens": (lambda: tiny_vit(reg_tokens=3), ("token", 0)),
    "mean-pooled": (lambda: tiny_vit(global_pool="avg"), ("mean", 1)),
}


def reference_map(model, image, target, query):
    RA, _, _ = ref_lrp(model, image, target, linear=ref_linear_original, add=ref_add_original)
    fused = RA[-1].clamp(min=0).mean(dim=0)
    kind, index = query
    row = fused[index] if kind == "token" else fused[index:].mean(dim=0)
    return row[model.num_prefix_tokens:].reshape(4, 4)


@pytest.mark.parametrize("model_name", MODELS)
def test_partial_lrp_matches_the_reference(model_name):
    factory, query = MODELS[model_name]
    model, images = factory().double(), random_images(3, seed=123, dtype=torch.float64)
    targets = [1, 4, 2]
    result = heatmap.explain(model, images, "partial-lrp", target=targets)
    for b in range(3):
        expected = reference_map(model, images[b:b + 1], targets[b], query)
        assert relative_error(result.maps[b], expected) < FLOAT64_TOLERANCE
    singles = torch.cat([heatmap.explain(model, images[i:i + 1], "partial-lrp", target=[targets[i]]).maps
                         for i in range(3)])
    assert relative_error(result.maps, singles) < FLOAT64_TOLERANCE


def test_partial_lrp_explains_clip_images_and_texts():
    from helpers.models import TEXTS, tiny_clip

    model, images = tiny_clip().double(), random_images(2, seed=5, dtype=torch.float64)
    result = heatmap.explain(model, images, "partial-lrp", texts=TEXTS)
    assert result.maps.shape == (2, 3, 4, 4) and torch.isfinite(result.maps).all()
    assert all(torch.isfinite(relevance).all() for row in result.text_relevance for relevance in row)
    assert result.maps.abs().amax() > 0
