"""Each method equals a plain-loop implementation of its METHODS.md formula."""

from __future__ import annotations

import pytest
import torch
from timm.models.deit import VisionTransformerDistilled

import heatmap
from helpers import reference
from helpers.models import sharpen_attention, tiny_vit
from helpers.rollout_reference import reference_maps


def distilled_vit():
    torch.manual_seed(0)
    model = VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=5)
    return sharpen_attention(model)


# name -> (model factory, query of docs/METHODS.md, protected token of rollout's discard)
MODELS = {
    "class-token": (lambda: tiny_vit(), ("token", 0), 0),
    "4-prefix-tokens": (lambda: tiny_vit(reg_tokens=3), ("token", 0), 0),
    "distillation-token": (distilled_vit, ("token", 0), 0),
    "mean-pooled": (lambda: tiny_vit(global_pool="avg"), ("mean", 1), None),
    "mean-pooled-4-registers": (lambda: tiny_vit(class_token=False, reg_tokens=4, global_pool="avg"), ("mean", 4),
                                None),
}

CASES = [
    ("rollout", {"head_fusion": "mean"}),
    ("rollout", {"head_fusion": "max", "discard_ratio": 0.5}),
    ("rollout", {"head_fusion": "min", "discard_ratio": 0.3, "start_layer": 1}),
    ("rollout", {"head_fusion": "mean", "discard_ratio": 0.9, "start_layer": -1}),
    ("grad-rollout", {}),
    ("grad-rollout", {"discard_ratio": 0.0, "start_layer": 1}),
    ("grad-rollout", {"discard_ratio": 0.5, "start_layer": -2}),
    ("chefer-generic", {}),
    ("chefer-generic", {"start_layer": -1}),
    ("chefer-generic", {"start_layer": 1}),
]


# Largest error of one image's float64 explanation against its float64
# reference, each map scaled by its largest value, over every case here.
# measured: 4.4e-16 native, 4.4e-16 portable (ATEN_CPU_CAPABILITY=default);
# 1e-12 keeps a margin of over 1000x.
FLOAT64_TOLERANCE = 1e-12
# The score read by the explanation against the reference's logit (relative).
# measured: 0 native, 0 portable; 1e-12.
SCORE_TOLERANCE = 1e-12
# A float32 explanation against the same float64 reference (round-off).
# measured: 3.4e-6 native, 1.9e-6 portable; 5e-5 keeps a margin of over 10x.
FLOAT32_TOLERANCE = 5e-5
# A float64 batch against its images one at a time, every method (the LRP
# methods among them). measured: 6.9e-16 native, 3.8e-16 portable on this Xeon;
# an AMD EPYC (MKL) measured up to 3.1e-11 for batches in float64 LRP
# (full-lrp). 1e-9 keeps over 30x above that.
BATCH_TOLERANCE = 1e-9


def assert_maps_equal(actual, expected, tolerance=FLOAT64_TOLERANCE):
    scale = expected.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    assert actual.shape == expected.shape
    assert ((actual - expected).abs() / scale).max() < tolerance


@pytest.mark.numerics
@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("method,options", CASES)
def test_method_matches_reference(model_name, method, options, images):
    factory, query, protect = MODELS[model_name]
    model, images = factory().double(), images.double()
    targets = torch.tensor([1, 4, 2])
    for b in range(3):  # each image alone: the batch's own test is below
        logits, expected = reference_maps(model, images[b:b + 1], targets[b:b + 1], method, options, query, protect)
        result = heatmap.explain(model, images[b:b + 1], method, target=[int(targets[b])], **options)
        assert_maps_equal(result.maps, expected)
        assert result.maps.dtype == torch.float64  # a float64 model is explained in float64
        assert result.targets.tolist() == [int(targets[b])]
        torch.testing.assert_close(result.scores, logits[0, targets[b:b + 1]].detach(), rtol=SCORE_TOLERANCE, atol=0)


@pytest.mark.numerics
@pytest.mark.parametrize("method,options", CASES)
def test_float32_explanation_is_the_float64_reference_to_round_off(method, options, images):
    factory, query, protect = MODELS["class-token"]
    targets = torch.tensor([1, 4, 2])
    model, reference_model = factory(), factory().double()
    for b in range(3):  # each image alone
        _, expected = reference_maps(reference_model, images[b:b + 1].double(), targets[b:b + 1], method, options,
                                     query, protect)
        result = heatmap.explain(model, images[b:b + 1], method, target=[int(targets[b])], **options)
        assert result.maps.dtype == torch.float32
        assert_maps_equal(result.maps.double(), expected, FLOAT32_TOLERANCE)


def test_attention_is_not_near_uniform(images):
    _, attentions = reference.manual_forward(tiny_vit(), images)
    for probs in attentions:
        assert probs.amax(dim=-1).mean() > 3.0 / probs.shape[-1]


@pytest.mark.numerics
@pytest.mark.parametrize("method", ["rollout", "grad-rollout", "chefer-generic"])
def test_non_square_grid_from_dynamic_size_model(method):
    model = tiny_vit(dynamic_img_size=True).double()
    torch.manual_seed(7)
    images = torch.randn(2, 3, 24, 40, dtype=torch.float64)  # a 3 x 5 grid of 8-pixel patches
    targets = torch.tensor([0, 3])
    options = {"discard_ratio": 0.5} if method != "chefer-generic" else {}
    for b in range(2):  # each image alone
        _, expected = reference_maps(model, images[b:b + 1], targets[b:b + 1], method, options, ("token", 0), 0)
        result = heatmap.explain(model, images[b:b + 1], method, target=[int(targets[b])], **options)
        assert result.maps.shape == (1, 3, 5)
        assert_maps_equal(result.maps, expected)


def test_default_target_is_top1(images):
    model = tiny_vit()
    result = heatmap.explain(model, images, "chefer-generic")
    assert result.targets.tolist() == model(images).argmax(dim=1).tolist()


@pytest.mark.numerics
@pytest.mark.parametrize("method", heatmap.methods())
def test_batch_equals_one_by_one_and_runs_repeat_exactly(method, images):
    model, images = tiny_vit().double(), images.double()
    targets = [0, 2, 4]
    batch = heatmap.explain(model, images, method, target=targets)
    singles = torch.cat([heatmap.explain(model, images[i:i + 1], method, target=[targets[i]]).maps for i in range(3)])
    assert_maps_equal(batch.maps, singles, BATCH_TOLERANCE)
    again = heatmap.explain(model, images, method, target=targets)
    assert batch.maps.numpy().tobytes() == again.maps.numpy().tobytes()
