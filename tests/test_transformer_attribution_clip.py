"""transformer-attribution on CLIP equals a plain, module-by-module reading of docs/METHODS.md.

For each (image, text) pair the reference (``helpers.transformer_attribution_reference``)
runs the image alone and the text alone through a manual forward pass of each
tower, starts the LRP pass at the embedding (``R_e = e * (s / ||e||) * t_hat``;
the text tower symmetrically, with the image's unit embedding), and applies
the rules of lrp_reference.py block by block. It imports nothing from heatmap.explainers.lrp.

Everything is compared in float64 (a float64 model is explained in float64).
"""

from __future__ import annotations

import open_clip
import pytest
import torch

import heatmap
from heatmap.explainers.driver import Driver
from heatmap.explainers.lrp import lrp_pass
from heatmap.explainers.registry import methods
from heatmap.models import adapter_for
from helpers.lrp_reference import (
    assert_close_scaled,
)
from helpers.models import TEXTS, tiny_clip, tokens_of
from helpers.transformer_attribution_reference import ref_pair

# Largest relative error of one image and its texts (explained together, the
# image alone) against the float64 reference of each pair. measured: 4.5e-15
# (maps) and 7.3e-15 (token relevance) native, 1.0e-14 and 8.9e-15 portable
# (ATEN_CPU_CAPABILITY=default); 1e-12 keeps over 100x and still catches any
# rule changed. The sequence-first layout against batch-first, the same batch:
# 7.3e-16 native, 8.7e-16 portable, within the same bound.
FLOAT64_TOLERANCE = 1e-12
# A batch against its images one at a time (and the texts reversed): the
# batch's shape changes how float64 matrix products are blocked and LRP's
# divisions amplify that. measured: 8.1e-16 native, 7.1e-16 portable on this
# Xeon; an AMD EPYC (MKL) measured up to 1.0e-12 on these models and 3.1e-11
# on full-lrp's. 1e-9 keeps over 30x above the EPYC figures.
BATCH_TOLERANCE = 1e-9


@pytest.fixture
def images():
    torch.manual_seed(5)
    return torch.randn(2, 3, 32, 32, dtype=torch.float64)


def with_biases(model, logit_scale=None):
    """Random biases everywhere, so that a rule that wrongly includes them shows.

    A larger ``logit_scale`` scales every dA_l and RA_l (as the classifier
    test's head gain does), so that ``mean_h((dA * RA)+)`` is not negligible
    next to the identity in ``rownorm(Abar + I)`` and the maps show the LRP part.
    """
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        if logit_scale is not None:
            model.logit_scale.fill_(float(torch.tensor(logit_scale).log()))
        for module in model.modules():
            for name in ("bias", "in_proj_bias"):
                bias = getattr(module, name, None)
                if isinstance(bias, torch.nn.Parameter):
                    bias.copy_(torch.randn(bias.shape, generator=generator) * 0.3)
    return model.double()


# -- the tests -------------------------------------------------------------------

CASES = {
    "class-token": dict(model=lambda: with_biases(tiny_clip()), options={}),
    "mean-pooled-quick-gelu": dict(model=lambda: with_biases(tiny_clip(pool_type="avg", quick_gelu=True), 1e3),
                                   options={}),
    "start-layers": dict(model=lambda: with_biases(tiny_clip(seed=1)), options={"start_layer": 1,
                                                                                "text_start_layer": -1}),
}


@pytest.mark.numerics
@pytest.mark.parametrize("case", list(CASES))
def test_maps_and_token_relevance_match_reference(case, images):
    model, options = CASES[case]["model"](), CASES[case]["options"]
    tokens = tokens_of(TEXTS)
    maps = []
    for b in range(2):  # each image alone, with the three texts: the batch's own test is below
        result = heatmap.explain(model, images[b:b + 1], "transformer-attribution", texts=TEXTS, **options)
        assert result.maps.shape == (1, 3, 4, 4)
        maps.append(result.maps)
        for t in range(3):
            image_map, token_relevance = ref_pair(model, images[b:b + 1], tokens, 0, t,
                                                  options.get("start_layer", 0),
                                                  options.get("text_start_layer", options.get("start_layer", 0)))
            assert_close_scaled(result.maps[0, t], image_map, FLOAT64_TOLERANCE)
            assert_close_scaled(result.text_relevance[0][t], token_relevance, FLOAT64_TOLERANCE)
    # the LRP part shows: the maps are not just the identity's class-token row
    maps = torch.cat(maps)
    assert maps.std(dim=(-2, -1)).min() > 1e-4 * maps.abs().max()


def tower_lrp(model, images, tokens, tower):
    """The package's LRP pass on one tower of one forward pass, started towards text 0 / image 0."""
    adapter = adapter_for(model)
    view = getattr(adapter, tower).lrp_view()
    with getattr(adapter, tower).attention_capture(None) as probe, view.capture(0) as capture, torch.no_grad():
        image_embedding, text_embedding = adapter.embeddings(images, tokens)
    other = (text_embedding[0] if tower == "vision" else image_embedding[0]) * adapter.logit_scale
    count = len(images) if tower == "vision" else len(tokens)
    with torch.no_grad():
        return lrp_pass(view, capture.activations(), probe.attention_probs,
                        other.expand(count, -1)), adapter.score(image_embedding, text_embedding)


def mean_pooled_norm_after_pool():
    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim=16, vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=3, head_width=8,
                                                        pool_type="avg", final_ln_after_pool=True),
                          text_cfg=dict(context_length=10, vocab_size=49408, width=32, heads=4, layers=3)).eval()


@pytest.mark.numerics
@pytest.mark.parametrize("factory", [tiny_clip, mean_pooled_norm_after_pool], ids=["class-token", "mean-norm-after"])
@pytest.mark.parametrize("tower", ["vision", "text"])
def test_relevance_is_conserved_and_sums_to_the_score(tower, factory, images):
    # The start relevance of each item sums to its score s cos(e, t) (the
    # logit without bias; measured 2.5e-16 native, 6.5e-16 portable with
    # ATEN_CPU_CAPABILITY=default, relative; checked to 1e-12). Every residual
    # add keeps its total per item (measured 3.7e-10 of the largest score both
    # ways: the 1e-9 stabiliser; checked to 1e-7, 270x), and the relevance at
    # the first block's input keeps the start's sum (measured 1.7e-6 relative
    # both ways, the stabiliser amplified through the blocks; checked to 1e-4, 60x).
    model = with_biases(factory())
    tokens = tokens_of(TEXTS)
    result, logits = tower_lrp(model, images, tokens, tower)
    expected = logits[:, 0] if tower == "vision" else logits[0, :]
    assert torch.allclose(result.start_sums, expected, rtol=1e-12, atol=0)
    for leaving, entering in result.residual_sums:
        assert (leaving - entering).abs().max() < 1e-7 * expected.abs().max()
    sums = result.input_relevance.sum(dim=(1, 2))
    assert ((sums - expected).abs() / expected.abs()).max() < 1e-4
    for relevance in result.attention_relevance:
        assert torch.isfinite(relevance).all()


@pytest.mark.numerics
def test_batch_and_text_order_independence_and_determinism(images):
    model = with_biases(tiny_clip())
    explainer = Driver(adapter_for(model), "transformer-attribution")
    both = explainer.explain_texts(images, TEXTS)
    for b in range(2):
        alone = explainer.explain_texts(images[b:b + 1], TEXTS[::-1])
        assert_close_scaled(alone.maps[0], both.maps[b].flip(0), BATCH_TOLERANCE)
        for t in range(3):
            assert_close_scaled(alone.text_relevance[0][2 - t], both.text_relevance[b][t], BATCH_TOLERANCE)
    again = explainer.explain_texts(images, TEXTS)
    assert both.maps.numpy().tobytes() == again.maps.numpy().tobytes()


@pytest.mark.numerics
def test_sequence_first_towers_give_the_same_maps(images):
    model = with_biases(tiny_clip())
    expected = heatmap.explain(model, images, "transformer-attribution", texts=TEXTS)
    # open_clip before 2.24 ran its blocks sequence-first: emulate that fully.
    for transformer in (model.visual.transformer, model.transformer):
        transformer.batch_first = False
        for block in transformer.resblocks:
            block.attn.batch_first = False
    actual = heatmap.explain(model, images, "transformer-attribution", texts=TEXTS)
    assert_close_scaled(actual.maps, expected.maps, FLOAT64_TOLERANCE)
    assert_close_scaled(torch.cat(actual.text_relevance[1]), torch.cat(expected.text_relevance[1]), FLOAT64_TOLERANCE)


def test_unsupported_tower_is_refused_before_any_work(images):
    model = tiny_clip()
    model.visual.transformer.resblocks[1].mlp = torch.nn.Sequential(
        torch.nn.Linear(32, 128), torch.nn.SiLU(), torch.nn.Linear(128, 32))
    forwards = []
    model.register_forward_pre_hook(lambda *_: forwards.append(1))
    with pytest.raises(heatmap.HeatmapError) as error:
        heatmap.explain(model, images, "transformer-attribution", texts=TEXTS)
    message = str(error.value)
    assert "image block 1" in message and "not supported for transformer-attribution" in message
    working = [method.name for method in methods().values() if method.lrp_rules is None]
    assert f"methods that do work for this model: {', '.join(working)}" in message
    assert "\n" not in message
    assert not forwards
