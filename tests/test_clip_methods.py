"""CLIP: each method on both towers equals a plain per-pair implementation."""

from __future__ import annotations

import open_clip
import pytest
import torch

import heatmap
from heatmap.explainers.driver import Driver
from heatmap.models import adapter_for
from helpers import clip_reference, reference
from helpers.models import TEXTS, random_images, tiny_clip, tokens_of
from helpers.rollout_reference import reference_pair


@pytest.fixture
def images():
    return random_images(2, seed=5)


CASES = [
    ("chefer-generic", {}),
    ("chefer-generic", {"start_layer": 0}),
    ("chefer-generic", {"start_layer": 1, "text_start_layer": -1}),
    ("rollout", {}),
    ("rollout", {"discard_ratio": 0.5}),
    ("grad-rollout", {}),
    ("grad-rollout", {"discard_ratio": 0.0, "start_layer": -2}),
]


def relative_error(actual, expected):
    # Scaled by the largest value; relevances below 1e-6 are float noise around zero.
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-6))


# Largest relative error of one image and its texts (float64) against the
# float64 reference of each pair, over every case here. measured: 7.6e-15
# native, 4.1e-15 portable (ATEN_CPU_CAPABILITY=default); 1e-12 keeps over 100x.
# The sequence-first layout against batch-first: 0 native, 0 portable.
FLOAT64_TOLERANCE = 1e-12
# The explanation's logit against the reference's (relative). measured:
# 1.3e-15 native, 2.7e-16 portable; 1e-12 keeps over 100x.
LOGIT_TOLERANCE = 1e-12
# A float32 explanation against the same float64 reference (round-off).
# measured: 2.9e-6 native, 1.6e-6 portable; 5e-5 keeps over 10x.
FLOAT32_TOLERANCE = 5e-5
# chefer-generic (no LRP) on a batch against one image, and with the texts
# reversed. measured: 7.8e-16 native, 9.4e-16 portable; 1e-12 keeps over 100x.
BATCH_TOLERANCE = 1e-12


@pytest.mark.numerics
@pytest.mark.parametrize("batched_backward", [False, True])
@pytest.mark.parametrize("method,options", CASES)
def test_clip_maps_and_token_relevance_match_reference(method, options, batched_backward, images):
    model, images = tiny_clip().double(), images.double()
    tokens = tokens_of(TEXTS)
    explainer = Driver(adapter_for(model), method, batched_backward=batched_backward, **dict(options))
    for b in range(2):  # each image alone, with the three texts: the batch's own test is below
        with torch.no_grad():  # a caller's no_grad must not stop the gradient methods
            result = explainer.explain_texts(images[b:b + 1], TEXTS)
        assert result.maps.shape == (1, 3, 4, 4)
        for t in range(3):
            image_map, token_relevance, logit = reference_pair(model, images[b:b + 1], tokens, method, options, 0, t)
            assert relative_error(result.maps[0, t], image_map) < FLOAT64_TOLERANCE
            assert relative_error(result.text_relevance[0][t], token_relevance) < FLOAT64_TOLERANCE
            assert result.logits[0, t] == pytest.approx(float(logit), rel=LOGIT_TOLERANCE)
            assert len(result.word_pieces[t]) == len(token_relevance)
        assert result.word_pieces[0] == ["a", "red", "circle"]


@pytest.mark.numerics
def test_float32_explanation_is_the_float64_reference_to_round_off(images):
    model = tiny_clip()
    tokens = tokens_of(TEXTS)
    explainer = Driver(adapter_for(model), "chefer-generic", start_layer=0)
    reference_model, reference_images = tiny_clip().double(), images.double()
    for b in range(2):  # each image alone, with the three texts
        result = explainer.explain_texts(images[b:b + 1], TEXTS)
        assert result.maps.dtype == torch.float32
        for t in range(3):
            image_map, token_relevance, _ = reference_pair(reference_model, reference_images[b:b + 1], tokens,
                                                           "chefer-generic", {"start_layer": 0}, 0, t)
            assert relative_error(result.maps[0, t].double(), image_map) < FLOAT32_TOLERANCE
            assert relative_error(result.text_relevance[0][t].double(), token_relevance) < FLOAT32_TOLERANCE


@pytest.mark.numerics
def test_quick_gelu_and_mean_pooled_image_tower(images):
    model, images = tiny_clip(pool_type="avg", quick_gelu=True).double(), images.double()
    explainer = Driver(adapter_for(model), "chefer-generic", start_layer=0)
    tokens = tokens_of(TEXTS[:2])
    for b in range(2):  # each image alone, with the two texts
        result = explainer.explain_texts(images[b:b + 1], TEXTS[:2])
        for t in range(2):
            image_attn, image_grads, *_ = clip_reference.pair_gradients(model, images[b:b + 1], tokens, 0, t)
            R = reference.chefer_generic_one(image_attn, image_grads, 0)
            expected = R[1:, 1:].mean(dim=0).reshape(4, 4)
            assert relative_error(result.maps[0, t], expected) < FLOAT64_TOLERANCE


@pytest.mark.numerics
def test_batch_and_text_order_independence_and_determinism(images):
    model, images = tiny_clip().double(), images.double()
    explainer = Driver(adapter_for(model), "chefer-generic", start_layer=0)
    full = explainer.explain_texts(images, TEXTS)
    single = explainer.explain_texts(images[1:], [TEXTS[2]])
    assert relative_error(single.maps[0, 0], full.maps[1, 2]) < BATCH_TOLERANCE
    assert relative_error(single.text_relevance[0][0], full.text_relevance[1][2]) < BATCH_TOLERANCE
    reversed_ = explainer.explain_texts(images, TEXTS[::-1])
    assert relative_error(reversed_.maps.flip(1), full.maps) < BATCH_TOLERANCE
    again = explainer.explain_texts(images, TEXTS)
    assert again.maps.numpy().tobytes() == full.maps.numpy().tobytes()


@pytest.mark.numerics
def test_logits_identical_with_and_without_probe(images):
    model = tiny_clip()
    tokens = tokens_of(TEXTS)
    adapter = adapter_for(model)
    with torch.no_grad():
        plain = model(images, tokens)
        plain_logits = plain[2] * plain[0] @ plain[1].T
        modules = adapter.vision.attention_modules + adapter.text.attention_modules
        with adapter.vision.attention_capture(None) as image_capture, \
                adapter.text.attention_capture(None) as text_capture:
            probed = model(images, tokens)
        probed_logits = probed[2] * probed[0] @ probed[1].T
    # float32; measured: 2.2e-7 native, 1.4e-7 portable (largest elementwise relative error)
    torch.testing.assert_close(probed_logits, plain_logits, rtol=1e-5, atol=1e-5)
    assert len(image_capture.attention_probs) == 3 and len(text_capture.attention_probs) == 3
    assert all("forward" not in vars(module) for module in modules)  # restored


def sequence_first(attention):
    """A block's attention called sequence-first, as older open_clip releases do."""
    def call(q_x, k_x=None, v_x=None, attn_mask=None):
        return attention(q_x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
    return call


@pytest.mark.numerics
def test_sequence_first_multihead_attention_is_handled(images):
    model, images = tiny_clip().double(), images.double()
    explainer_bf = Driver(adapter_for(model), "chefer-generic", start_layer=0)
    expected = explainer_bf.explain_texts(images, TEXTS)
    # Older open_clip releases run their blocks sequence-first: emulate one.
    for block in [*model.visual.transformer.resblocks, *model.transformer.resblocks]:
        block.attn.batch_first = False
        block.attention = sequence_first(block.attention)
    actual = Driver(adapter_for(model), "chefer-generic", start_layer=0).explain_texts(images, TEXTS)
    assert relative_error(actual.maps, expected.maps) < FLOAT64_TOLERANCE


def test_unsupported_blocks_are_refused():
    model = open_clip.CLIP(embed_dim=16, vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=2, head_width=8,
                                                         attentional_pool=True),
                           text_cfg=dict(context_length=10, vocab_size=49408, width=32, heads=4, layers=2))
    with pytest.raises(heatmap.HeatmapError, match="not supported: an attention-pool image head"):
        adapter_for(model)


def test_api_with_texts(images):
    model = tiny_clip()
    result = heatmap.explain(model, images, "chefer-generic", texts=TEXTS)
    assert result.maps.shape == (2, 3, 4, 4) and result.logits.shape == (2, 3)
    assert len(result.text_relevance) == 2 and len(result.text_relevance[0]) == 3
