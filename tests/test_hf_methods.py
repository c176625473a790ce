"""Every method on transformers ViT, DeiT and CLIP models: float64 references, and parity with timm and open_clip.

Each transformers model here is built from a config with the weights of a tiny
timm or open_clip model (converted in ``helpers.hf_models``). The references
are the test suite's own float64 readings of docs/METHODS.md (``helpers.rollout_reference``,
``helpers.baseline_reference``, ``helpers.transformer_attribution_reference``,
``helpers.partial_lrp_reference``, ``helpers.full_lrp_reference``,
``helpers.legrad_reference``), which run their explicit forward on the timm /
open_clip twin and nothing of vit-heatmap: so the same weights explained
through transformers must give those numbers.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import heatmap  # noqa: E402
from helpers import (  # noqa: E402
    baseline_reference,
    full_lrp_reference,
    legrad_reference,
    partial_lrp_reference,
    reference,
    rollout_reference,
    transformer_attribution_reference,
)
from helpers.hf_models import clip_pair, clip_tokenizer, needs_float64_clip, vit_pair  # noqa: E402
from helpers.models import TEXTS, random_images, tokens_of  # noqa: E402

METHODS = heatmap.methods()
CLASSIFIERS = ["vit", "deit", "deit-teacher"]
# DeiT's teacher variant averages two heads' logits: the LRP rules do not cover it (as for timm's twin)
LRP_METHODS = {"transformer-attribution", "partial-lrp", "full-lrp"}
TARGETS = [1, 4, 2]

# Largest relative error of one image's float64 transformers explanation (CLIP:
# one image and its texts) against the one-image float64 reference, each map
# scaled by its largest value, over every case here. measured: 2.3e-16
# (classifier maps) and 5.0e-15 (token relevance) native, 5.8e-16 and 5.4e-15
# portable (ATEN_CPU_CAPABILITY=default); 1e-12 keeps over 100x.
FLOAT64_TOLERANCE = 1e-12
# The trained demo CLIP through transformers against open_clip, both float64,
# the same batch: its token relevance measured 6.8e-14 native, 2.6e-13 portable
# (the trained model's relevance is small, 5e-4, so round-off weighs more);
# 1e-11 keeps over 30x.
DEMO_TOLERANCE = 1e-11
# transformers' CLIP selects the class token BEFORE post_layernorm (as OpenAI's
# CLIP does), open_clip's twin after ln_post: the IndexSelect rule
# x * safe_divide(R, x) then sees another x, and its +1e-9 stabiliser moves the
# LRP methods' image maps (relative, float64; selecting the normed token
# instead gives 3.7e-16). measured: 3.8e-7 native, 3.8e-7 portable (one image
# and its texts); 5e-6 keeps over 10x. Text towers pool in the same order and
# stay within FLOAT64_TOLERANCE.
CLIP_IMAGE_LRP_TOLERANCE = 5e-6
# transformers against timm / open_clip, the same weights, both in float32.
# measured: 6.1e-8 (ViT) and 5.4e-7 (CLIP, its LRP image maps, for the reason
# above) native, 6.1e-8 and 7.5e-7 portable: the probe computes attention in the same
# order as timm and PyTorch. 1e-5 keeps over 18x.
PARITY_TOLERANCE = 1e-5


def relative_error(actual, expected):
    """Largest error relative to the largest |expected| (relevances below 1e-6 are noise around zero)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-6))


def classifier_reference(method, twin, images, targets):
    """``[B, gh, gw]``: the suite's float64 reference of ``method`` on the timm twin."""
    query, targets = ("token", 0), torch.tensor(targets)
    if method in ("rollout", "grad-rollout", "chefer-generic"):
        return rollout_reference.reference_maps(twin, images, targets, method, {}, query, 0)[1]
    if method in baseline_reference.REFERENCES:
        _, attentions, grads = reference.gradients(twin, images, targets)
        return torch.stack([baseline_reference.REFERENCES[method](attentions[-1][b], grads[-1][b], query,
                                                                  twin.num_prefix_tokens).reshape(4, 4)
                            for b in range(len(images))])
    if method == "transformer-attribution":
        return transformer_attribution_reference.ref_maps(twin, images, targets, query)
    if method == "partial-lrp":
        return torch.stack([partial_lrp_reference.reference_map(twin, images[b:b + 1], int(targets[b]), query)
                            for b in range(len(images))])
    if method == "full-lrp":
        return torch.stack([full_lrp_reference.ref_timm(twin, images[b:b + 1], int(targets[b]))
                            for b in range(len(images))])
    if hasattr(twin, "head_dist"):  # the distilled model reads the mean of its two heads' logits
        outputs, attentions = legrad_reference.vit_blocks(twin, images)
        rows = torch.arange(len(images))

        def score(x):
            tokens = twin.norm(x)
            return ((twin.head(tokens[:, 0]) + twin.head_dist(tokens[:, 1])) / 2)[rows, targets]

        assert relative_error(score(outputs[-1]).detach(), twin(images)[rows, targets].detach()) < 1e-13
        return legrad_reference.legrad_map(score, outputs, attentions, -2, twin.num_prefix_tokens, (4, 4))
    return legrad_reference.vit_reference(twin, images, targets, -2)


@pytest.mark.numerics
@pytest.mark.parametrize("kind", CLASSIFIERS)
@pytest.mark.parametrize("method", METHODS)
def test_classifier_maps_match_the_reference(kind, method):
    twin, model = vit_pair(kind, dtype=torch.float64)
    images = random_images(3, seed=123, dtype=torch.float64)
    if kind == "deit-teacher" and method in LRP_METHODS:
        with pytest.raises(heatmap.UnsupportedModelError, match="distillation head"):
            heatmap.explain(model, images, method, target=TARGETS)
        return
    for b in range(3):  # each image alone
        result = heatmap.explain(model, images[b:b + 1], method, target=TARGETS[b:b + 1])
        assert result.maps.dtype == torch.float64
        expected = classifier_reference(method, twin, images[b:b + 1], TARGETS[b:b + 1])
        assert relative_error(result.maps, expected) < FLOAT64_TOLERANCE


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """CLIP's own byte-pair tokenizer, from vocab and merges files written here (no download)."""
    return clip_tokenizer(tmp_path_factory.mktemp("clip-tokenizer") / "files")


def clip_reference(method, twin, images, tokens):
    """``[B, T, gh, gw]`` and per image, per text, the token relevance (None: image-only method)."""
    batch, count = len(images), len(tokens)
    if method == "legrad":
        return legrad_reference.clip_reference_maps(twin, images, tokens, -2), None
    if method == "full-lrp":
        text_embedding = twin.encode_text(tokens).detach()
        maps = [[full_lrp_reference.ref_clip(twin, images[b:b + 1], text_embedding[t]) for t in range(count)]
                for b in range(batch)]
        return torch.stack([torch.stack(row) for row in maps]), None
    pairs = []
    for b in range(batch):
        row = []
        for t in range(count):
            if method in ("rollout", "grad-rollout", "chefer-generic"):
                row.append(rollout_reference.reference_pair(twin, images, tokens, method, {}, b, t)[:2])
            elif method in baseline_reference.REFERENCES:
                row.append(baseline_reference.clip_pair_reference(method, twin, images, tokens, b, t))
            elif method == "transformer-attribution":
                row.append(transformer_attribution_reference.ref_pair(twin, images, tokens, b, t))
            else:
                row.append(partial_lrp_reference.clip_partial_lrp_pair(twin, images[b:b + 1], tokens[t:t + 1]))
        pairs.append(row)
    maps = torch.stack([torch.stack([image_map for image_map, _ in row]) for row in pairs])
    return maps, [[text_row for _, text_row in row] for row in pairs]


@pytest.mark.numerics
@needs_float64_clip
@pytest.mark.parametrize("method", METHODS)
def test_clip_maps_and_token_relevance_match_the_reference(method, tokenizer):
    twin, model = clip_pair(dtype=torch.float64)
    images = random_images(2, seed=5, dtype=torch.float64)
    tolerance = CLIP_IMAGE_LRP_TOLERANCE if method in LRP_METHODS else FLOAT64_TOLERANCE
    for b in range(2):  # each image alone, with the three texts
        result = heatmap.explain(model, images[b:b + 1], method, texts=TEXTS, processor=tokenizer)
        expected_maps, expected_text = clip_reference(method, twin, images[b:b + 1], tokens_of(TEXTS))
        assert relative_error(result.maps, expected_maps) < tolerance
        if expected_text is None:
            assert result.text_relevance is None
            continue
        assert [pieces for pieces in result.word_pieces] == [text.split() for text in TEXTS]
        for t in range(3):
            assert relative_error(result.text_relevance[0][t], expected_text[0][t]) < FLOAT64_TOLERANCE


# -- parity with timm and open_clip, in float32 ---------------------------------------

@pytest.mark.numerics
@pytest.mark.parametrize("method", METHODS)
def test_timm_and_transformers_vit_give_the_same_maps(method):
    twin, model = vit_pair("vit")
    images = random_images(3, seed=11)
    ours = heatmap.explain(model, images, method, target=TARGETS).maps
    theirs = heatmap.explain(twin, images, method, target=TARGETS).maps
    assert ours.dtype == torch.float32
    assert relative_error(ours, theirs) < PARITY_TOLERANCE


@pytest.mark.numerics
@pytest.mark.parametrize("method", METHODS)
def test_open_clip_and_transformers_clip_give_the_same_maps(method, tokenizer):
    twin, model = clip_pair()
    images = random_images(2, seed=11)
    ours = heatmap.explain(model, images, method, texts=TEXTS, processor=tokenizer)
    theirs = heatmap.explain(twin, images, method, texts=TEXTS)
    assert relative_error(ours.maps, theirs.maps) < PARITY_TOLERANCE
    assert relative_error(ours.logits, theirs.logits) < PARITY_TOLERANCE
    if theirs.text_relevance is not None:
        for ours_row, theirs_row in zip(ours.text_relevance, theirs.text_relevance, strict=True):
            for mine, other in zip(ours_row, theirs_row, strict=True):
                assert relative_error(mine, other) < PARITY_TOLERANCE


def test_the_tokenizer_files_are_clips_own(tokenizer):
    ids = tokenizer(TEXTS, padding="max_length", max_length=10, return_tensors="pt")["input_ids"]
    expected = tokens_of(TEXTS)
    for row, other in zip(ids, expected, strict=True):
        end = int(other.argmax())
        assert row[:end + 1].tolist() == other[:end + 1].tolist()


@pytest.fixture(scope="module")
def demo_pair():
    from heatmap.demo.shapes_world import make_scenes
    from heatmap.demo.transformers_clip import demo_clip_as_transformers

    return demo_clip_as_transformers(), [scene.image for scene in make_scenes(2, seed=5)]


@pytest.mark.numerics
@needs_float64_clip
@pytest.mark.parametrize("method", METHODS)
def test_the_trained_demo_clip_gives_the_same_maps_through_transformers(method, demo_pair):
    (model, processor), scenes = demo_pair
    texts = ["a red circle", "a blue star", "a green cross"]
    if method == "full-lrp":  # its convolutional stem is refused in both libraries, for the same reason
        for candidate, its_processor in ((model, processor), ("demo", None)):
            with pytest.raises(heatmap.UnsupportedModelError, match="convolutional stem"):
                heatmap.explain(candidate, scenes, method, texts=texts, processor=its_processor)
        return
    # in float64: the text relevance of the trained model is small enough (5e-4) for float32 round-off of the
    # head mean to show (3.7e-5 relative); float64 compares the conversion, not the round-off
    ours = heatmap.explain(model, scenes, method, texts=texts, processor=processor, precision="float64")
    theirs = heatmap.explain("demo", scenes, method, texts=texts, precision="float64")
    tolerance = CLIP_IMAGE_LRP_TOLERANCE if method in LRP_METHODS else DEMO_TOLERANCE
    assert relative_error(ours.maps, theirs.maps) < tolerance
    if theirs.text_relevance is not None:
        assert ours.word_pieces == theirs.word_pieces
        for ours_row, theirs_row in zip(ours.text_relevance, theirs.text_relevance, strict=True):
            for mine, other in zip(ours_row, theirs_row, strict=True):
                assert relative_error(mine, other) < DEMO_TOLERANCE
