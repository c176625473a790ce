"""partial-lrp and the ORIGINAL LRP rules (the authors' layers_lrp.py), in float64.

The rules on 2-unit examples worked out by hand, then the method on tiny
random ViTs against ``helpers.lrp_reference`` run with the original rules:
``mean_h((RA_{L-1})+)[q, P:]``; and on tiny CLIPs (image maps and text-token
relevance) against a reference of both towers written out in
``helpers.partial_lrp_reference``.
"""

from __future__ import annotations

import pytest
import torch

import heatmap
from heatmap.explainers.lrp import linear_relevance_original, residual_relevance_original
from helpers.lrp_reference import (
    ref_add,
    ref_add_original,
    ref_linear,
    ref_linear_original,
    relative_error,
)
from helpers.models import TEXTS, random_images, tiny_clip, tiny_vit, tokens_of
from helpers.partial_lrp_reference import clip_image_forward, clip_partial_lrp_pair, clip_text_forward, reference_map

EPS = 1e-9
# Largest relative error of one image (CLIP: one image and its texts) against
# the one-image float64 reference. measured: 1.5e-15 native (a CLIP image map;
# text-token relevance 1.1e-15, the ViTs 1.2e-16), 2.7e-15 portable
# (ATEN_CPU_CAPABILITY=default); 1e-12 keeps over 600x.
FLOAT64_TOLERANCE = 1e-12
# A batch against its images one at a time. measured: 3.1e-16 native, 5.3e-16
# portable on this Xeon; an AMD EPYC (MKL) measured up to 3.1e-11 for batches
# in float64 LRP (full-lrp). 1e-9 keeps over 30x above that.
BATCH_TOLERANCE = 1e-9
# The reference's towers against open_clip's, one item each. measured: 7.3e-16
# native, 6.9e-16 portable; 1e-13 keeps over 100x.
EMBEDDING_TOLERANCE = 1e-13


def f64(*values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.numerics
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
    # 2 / (1 + 1e-9): 2e-9 below 2, the stabiliser's share; 1e-7 keeps 50x and still tells 2 from 1
    assert abs(float(doubled.sum()) - 2.0) < 1e-7


@pytest.mark.numerics
def test_original_residual_add_is_not_rescaled():
    a, b, R = f64(1.0, 3.0), f64(1.0, -1.0), f64(2.0, 4.0)
    rel_a, rel_b = residual_relevance_original(a, b, R)
    # z = a + b = [2, 2]; each operand's share R * operand / (z + 1e-9)
    assert torch.equal(rel_a, f64(1.0 * (2.0 / (2.0 + EPS)), 3.0 * (4.0 / (2.0 + EPS))))
    assert torch.equal(rel_b, f64(1.0 * (2.0 / (2.0 + EPS)), -1.0 * (4.0 / (2.0 + EPS))))


@pytest.mark.numerics
def test_the_references_agree_with_the_hand_worked_rules():
    x, weight, R = f64([1.0, -1.0]), f64([1.0, -1.0]), f64([1.0])
    # measured: 0 difference native and portable (ATEN_CPU_CAPABILITY=default)
    assert torch.allclose(ref_linear_original(x, weight, R), linear_relevance_original(x, weight, R), rtol=1e-15)
    a, b = f64(1.0, 3.0), f64(1.0, -1.0)
    for ours, theirs in zip(residual_relevance_original(a, b, f64(2.0, 4.0)),
                            ref_add_original(a, b, f64(2.0, 4.0)), strict=True):
        assert torch.equal(ours, theirs)


MODELS = {
    "class-token": (lambda: tiny_vit(), ("token", 0)),
    "4-prefix-tokens": (lambda: tiny_vit(reg_tokens=3), ("token", 0)),
    "mean-pooled": (lambda: tiny_vit(global_pool="avg"), ("mean", 1)),
    "non-square-3x5": (lambda: tiny_vit(img_size=(24, 40)), ("token", 0)),
}


def images_for(model, count, seed):
    """``count`` standard-normal float64 images of the model's input size."""
    if tuple(model.patch_embed.img_size) == (32, 32):
        return random_images(count, seed=seed, dtype=torch.float64)
    torch.manual_seed(seed)
    return torch.randn(count, 3, *model.patch_embed.img_size, dtype=torch.float64)


@pytest.mark.numerics
@pytest.mark.parametrize("model_name", MODELS)
def test_partial_lrp_matches_the_reference(model_name):
    factory, query = MODELS[model_name]
    model = factory().double()
    images = images_for(model, 3, seed=123)
    targets = [1, 4, 2]
    singles = []
    for b in range(3):  # each image alone
        result = heatmap.explain(model, images[b:b + 1], "partial-lrp", target=[targets[b]])
        assert result.maps.shape == (1, *model.patch_embed.grid_size)
        expected = reference_map(model, images[b:b + 1], targets[b], query)
        assert relative_error(result.maps[0], expected) < FLOAT64_TOLERANCE
        singles.append(result.maps)
    # the batch equals its images one at a time
    batch = heatmap.explain(model, images, "partial-lrp", target=targets)
    for b in range(3):
        assert relative_error(batch.maps[b], singles[b][0]) < BATCH_TOLERANCE


def test_partial_lrp_explains_clip_images_and_texts():
    model, images = tiny_clip().double(), random_images(2, seed=5, dtype=torch.float64)
    result = heatmap.explain(model, images, "partial-lrp", texts=TEXTS)
    assert result.maps.shape == (2, 3, 4, 4) and torch.isfinite(result.maps).all()
    assert all(torch.isfinite(relevance).all() for row in result.text_relevance for relevance in row)
    assert result.maps.abs().amax() > 0


# -- CLIP, against helpers.partial_lrp_reference ------------------------------------

def with_biases(model):
    """Random biases everywhere, so that a rule that wrongly includes them shows."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            for name in ("bias", "in_proj_bias"):
                bias = getattr(module, name, None)
                if isinstance(bias, torch.nn.Parameter):
                    bias.copy_(torch.randn(bias.shape, generator=generator) * 0.3)
    return model.double()


CLIP_CASES = {
    "class-token": lambda: with_biases(tiny_clip()),
    "mean-pooled-quick-gelu": lambda: with_biases(tiny_clip(seed=1, pool_type="avg", quick_gelu=True)),
}


@pytest.mark.numerics
@pytest.mark.parametrize("case", CLIP_CASES)
def test_partial_lrp_on_clip_matches_the_reference(case):
    """Image maps and text-token relevance of every (image, text) pair equal the float64 reference."""
    model = CLIP_CASES[case]()
    images, tokens = random_images(2, seed=5, dtype=torch.float64), tokens_of(TEXTS)
    # the reference's towers are the model's
    with torch.no_grad():
        for b in range(2):
            image_embedding = clip_image_forward(model, images[b:b + 1])[3]
            assert relative_error(image_embedding, model.encode_image(images[b:b + 1])) < EMBEDDING_TOLERANCE
        for t in range(3):
            text_embedding = clip_text_forward(model, tokens[t:t + 1])[3]
            assert relative_error(text_embedding, model.encode_text(tokens[t:t + 1])) < EMBEDDING_TOLERANCE
    for b in range(2):  # each image alone, with the three texts
        result = heatmap.explain(model, images[b:b + 1], "partial-lrp", texts=TEXTS)
        assert result.maps.shape == (1, 3, 4, 4)
        for t in range(3):
            image_map, token_relevance = clip_partial_lrp_pair(model, images[b:b + 1], tokens[t:t + 1])
            assert relative_error(result.maps[0, t], image_map) < FLOAT64_TOLERANCE
            assert relative_error(result.text_relevance[0][t], token_relevance) < FLOAT64_TOLERANCE


@pytest.mark.numerics
def test_the_clip_reference_tells_the_rule_sets_apart():
    # transformer-attribution's rules (shared Z, rescaled adds) give other
    # numbers on this model, so the reference above pins the ORIGINAL rules
    model = CLIP_CASES["class-token"]()
    images, tokens = random_images(2, seed=5, dtype=torch.float64), tokens_of(TEXTS)
    result = heatmap.explain(model, images, "partial-lrp", texts=TEXTS)
    image_map, token_relevance = clip_partial_lrp_pair(model, images[:1], tokens[1:2], ref_linear, ref_add)
    assert relative_error(result.maps[0, 1], image_map) > 1e-3
    assert relative_error(result.text_relevance[0][1], token_relevance) > 1e-3
