"""SigLIP: the image tower's attention-pooling head explained as one more attention layer; a float64 reference.

The reference (``helpers.siglip_reference``) runs SigLIP by hand (explicit attention in every layer and
in the pooling head, nothing of vit-heatmap), takes the gradients of each
``logits_per_image[b, t]``, and lays the head out as docs/METHODS.md ("Modern
ViT parts") does: the probe is token 0 of ``N + 1``; every block's ``[N, N]``
gets a zero row and column 0; the head's ``[1, N]`` is the probe's row of one
more layer whose other rows are 0. Then the plain-loop methods of
``helpers.reference`` read them, query row: the probe. legrad reads each
block's output through the whole read-out (post_layernorm, the head and its
MLP). The text tower pools its LAST position, which is its query row.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import heatmap  # noqa: E402
from helpers import reference  # noqa: E402
from helpers.hf_models import siglip_tokenizer, tiny_siglip  # noqa: E402
from helpers.models import random_images  # noqa: E402
from helpers.siglip_reference import image_forward, legrad_reference, pair_reference  # noqa: E402

TEXTS = ["a red circle", "two blue stars on grass", "cat"]
WORKING = ["rollout", "grad-rollout", "chefer-generic", "raw-attention", "attention-gradcam", "legrad"]
# the library's CLIP default start layers (registry: clip_defaults); the head counts as the last layer
STARTS = {"rollout": 0, "grad-rollout": 0, "chefer-generic": -1, "raw-attention": -1, "attention-gradcam": -1,
          "legrad": -2}
# Largest relative error of one image's float64 explanation (with its texts)
# against the one-image float64 reference over every case here. measured:
# 9.5e-16 native, 1.6e-15 portable (ATEN_CPU_CAPABILITY=default); 1e-12 keeps
# over 1000x.
FLOAT64_TOLERANCE = 1e-12


def relative_error(actual, expected):
    assert actual.shape == expected.shape
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-6))


def method_row(method, A, G, start, query_index, columns, protect):
    """``method``'s relevance over ``columns`` of the query row (docs/METHODS.md), from per-layer [H, N, N]."""
    if method == "raw-attention":
        return A[-1].mean(dim=0)[query_index, columns]
    if method == "attention-gradcam":
        weights = G[-1][:, query_index, columns].mean(dim=-1)
        return (weights[:, None] * A[-1][:, query_index, columns]).mean(dim=0).clamp(min=0)
    if method == "rollout":
        R = reference.rollout_one(A, "mean", 0.0, start, protect)
    elif method == "grad-rollout":
        R = reference.grad_rollout_one(A, G, 0.9, start)
    else:
        R = reference.chefer_generic_one(A, G, start)
    return R[query_index, columns]


@pytest.fixture(scope="module")
def setting():
    model = tiny_siglip().double()
    tokenizer = siglip_tokenizer()
    tokens = tokenizer(TEXTS, padding="max_length", max_length=8, truncation=True, return_tensors="pt")["input_ids"]
    return model, tokenizer, tokens, random_images(2, seed=5, dtype=torch.float64)


@pytest.mark.numerics
@pytest.mark.parametrize("method", WORKING)
def test_maps_and_token_relevance_match_the_reference(method, setting):
    model, tokenizer, tokens, images = setting
    ends = [row.tolist().index(1) for row in tokens]  # the first </s>
    for b in range(2):  # each image alone, with the three texts
        image = images[b:b + 1]
        result = heatmap.explain(model, image, method, texts=TEXTS, processor=tokenizer)
        assert result.maps.shape == (1, 3, 4, 4)
        assert result.word_pieces == [text.split() for text in TEXTS]
        for t in range(3):
            image_A, image_G, text_A, text_G, logits = pair_reference(model, image, tokens, 0, t)
            assert relative_error(result.logits[0, t], logits[0, t]) < FLOAT64_TOLERANCE
            image_start = STARTS[method] % len(image_A)
            # the image's columns: the patches after the probe; the text's: its word pieces before </s>
            if method == "legrad":
                image_row = legrad_reference(model, image, tokens, t, image_start)
            else:
                image_row = method_row(method, image_A, image_G, image_start, 0, slice(1, None), protect=0)
            assert relative_error(result.maps[0, t], image_row.reshape(4, 4)) < FLOAT64_TOLERANCE
            if method == "legrad":  # the authors define LeGrad for the image tower only
                assert result.text_relevance is None
                continue
            last = tokens.shape[1] - 1
            text_row = method_row(method, text_A, text_G, STARTS[method] % len(text_A), last, slice(0, ends[t]),
                                  protect=None)
            assert relative_error(result.text_relevance[0][t], text_row) < FLOAT64_TOLERANCE


@pytest.mark.numerics
def test_raw_attention_is_the_pooling_heads_attention(setting):
    model, tokenizer, _, images = setting
    for b in range(2):  # each image alone
        result = heatmap.explain(model, images[b:b + 1], "raw-attention", texts=TEXTS[:1], processor=tokenizer)
        _, _, pool, _ = image_forward(model, images[b:b + 1])
        expected = pool.detach().mean(dim=1)[:, 0].reshape(1, 4, 4)
        assert relative_error(result.maps[:, 0], expected) < FLOAT64_TOLERANCE


@pytest.mark.parametrize("method", ["transformer-attribution", "partial-lrp", "full-lrp"])
def test_the_other_methods_are_refused_naming_those_that_work(method, setting):
    model, tokenizer, _, images = setting
    with pytest.raises(heatmap.UnsupportedModelError) as error:
        heatmap.explain(model, images, method, texts=TEXTS, processor=tokenizer)
    message = str(error.value)
    assert "attention-pooling head" in message
    assert message.endswith("methods that do work for this model: " + ", ".join(sorted(WORKING)))


@pytest.mark.numerics
def test_probabilities_are_each_pairs_sigmoid(setting):
    model, tokenizer, _, images = setting
    result = heatmap.explain(model, images, "rollout", texts=TEXTS, processor=tokenizer)
    assert torch.equal(result.probabilities, result.logits.sigmoid())
    tokens = tokenizer(TEXTS, padding="max_length", max_length=8, return_tensors="pt")["input_ids"]
    for b in range(2):  # each image alone
        alone = heatmap.explain(model, images[b:b + 1], "rollout", texts=TEXTS, processor=tokenizer)
        output = model(pixel_values=images[b:b + 1], input_ids=tokens)
        assert relative_error(alone.logits, output.logits_per_image.detach()) < FLOAT64_TOLERANCE
