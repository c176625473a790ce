"""The CVPR 2021 paper's attention baselines equal plain readings of docs/METHODS.md, in float64.

raw-attention: ``mean_h(A_{L-1})[q, P:]``; attention-gradcam: per head
``w_h = mean_j dA_{L-1}[h, q, P+j]``, map ``(mean_h(w_h * A_{L-1}[h, q, P:]))+``.
The references (``helpers.baseline_reference``) use the explicit forward of
``helpers.reference`` and ``helpers.clip_reference`` and nothing of vit-heatmap.
"""

from __future__ import annotations

import pytest
import torch

import heatmap
from helpers import reference
from helpers.baseline_reference import REFERENCES, clip_pair_reference
from helpers.models import TEXTS, random_images, tiny_clip, tiny_vit, tokens_of

# Largest relative error of one image's float64 maps (CLIP: one image and its
# texts) against the one-image float64 reference, over every case here.
# measured: 7.6e-15 native, 5.2e-15 portable (ATEN_CPU_CAPABILITY=default);
# 1e-12 keeps a margin of over 100x.
FLOAT64_TOLERANCE = 1e-12
# A batch against its images one at a time (no LRP here). measured: 0 native,
# 0 portable; 1e-12.
BATCH_TOLERANCE = 1e-12

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


def relative_error(actual, expected):
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-300))


@pytest.mark.numerics
@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("method", REFERENCES)
def test_classifier_maps_match_the_reference(model_name, method):
    factory, query = MODELS[model_name]
    model = factory().double()
    images = images_for(model, 3, seed=123)
    targets = torch.tensor([1, 4, 2])
    prefix, grid = model.num_prefix_tokens, tuple(model.patch_embed.grid_size)
    for b in range(3):  # each image alone: the batch's own test is below
        _, attentions, grads = reference.gradients(model, images[b:b + 1], targets[b:b + 1])
        result = heatmap.explain(model, images[b:b + 1], method, target=[int(targets[b])])
        assert result.maps.shape == (1, *grid)
        expected = REFERENCES[method](attentions[-1][0], grads[-1][0], query, prefix).reshape(grid)
        assert relative_error(result.maps[0], expected) < FLOAT64_TOLERANCE


@pytest.mark.numerics
@pytest.mark.parametrize("method", REFERENCES)
def test_clip_maps_and_token_relevance_match_the_reference(method):
    model, images = tiny_clip().double(), random_images(2, seed=5, dtype=torch.float64)
    tokens = tokens_of(TEXTS)
    for b in range(2):  # each image alone, with the three texts
        result = heatmap.explain(model, images[b:b + 1], method, texts=TEXTS)
        for t in range(3):
            expected, text_row = clip_pair_reference(method, model, images[b:b + 1], tokens, 0, t)
            assert relative_error(result.maps[0, t], expected) < FLOAT64_TOLERANCE
            assert relative_error(result.text_relevance[0][t], text_row) < FLOAT64_TOLERANCE


@pytest.mark.numerics
@pytest.mark.parametrize("method", REFERENCES)
def test_batch_equals_one_by_one_and_runs_repeat(method):
    model, images = tiny_vit().double(), random_images(3, seed=123, dtype=torch.float64)
    batch = heatmap.explain(model, images, method, target=[0, 2, 4])
    singles = torch.cat([heatmap.explain(model, images[i:i + 1], method, target=[[0, 2, 4][i]]).maps
                         for i in range(3)])
    assert relative_error(batch.maps, singles) < BATCH_TOLERANCE
    again = heatmap.explain(model, images, method, target=[0, 2, 4])
    assert batch.maps.numpy().tobytes() == again.maps.numpy().tobytes()


def test_raw_attention_is_class_agnostic():
    model, images = tiny_vit(), random_images(1, seed=1)
    first = heatmap.explain(model, images, "raw-attention", target=0)
    other = heatmap.explain(model, images, "raw-attention", target=3)
    assert torch.equal(first.maps, other.maps)
