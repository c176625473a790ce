"""transformer-attribution equals a plain, module-by-module reading of docs/METHODS.md.

The reference (``helpers.transformer_attribution_reference``) runs each image
alone through a manual forward pass and applies the LRP rules as METHODS.md
words them (lrp_reference.py: gradient times input taken with autograd; plain
loops over blocks); it imports nothing from heatmap.explainers.lrp. The models are the tiny random ViTs of conftest.py
with peaked attention, and random biases, so that ignoring them matters.

Everything is compared in float64 (a float64 model is explained in float64):
LRP is badly conditioned, so float32 round-off says nothing about the rules.
"""

from __future__ import annotations

import pytest
import torch
from timm.layers import SwiGLU
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

import heatmap
from heatmap.errors import HeatmapError, UnsupportedModelError
from heatmap.explainers.driver import Driver
from heatmap.explainers.lrp import lrp_pass
from heatmap.explainers.registry import methods
from heatmap.models import adapter_for
from heatmap.models.timm.lrp import check_supported, timm_lrp_view, unsupported_operation
from helpers import reference
from helpers.lrp_reference import (
    assert_close_scaled,
    ref_lrp,
)
from helpers.models import sharpen_attention, tiny_vit
from helpers.transformer_attribution_reference import ref_maps

TARGETS = torch.tensor([1, 4, 2])

# Largest relative error of one image (explained alone) against the one-image
# float64 reference (RA, input relevance and maps, every case and start layer).
# measured: 6.9e-16 native, 5.6e-16 portable (ATEN_CPU_CAPABILITY=default); 1e-12
# keeps over 100x and still catches any rule changed (the Clone rule alone moves
# these maps by ~1e-9 relative, the row normalisation by ~1e-1).
FLOAT64_TOLERANCE = 1e-12
# A batch against its images one at a time: the batch's shape changes how
# float64 matrix products are blocked and LRP's divisions amplify that.
# measured: 9.2e-16 native, 3.7e-16 portable on this Xeon; an AMD EPYC (MKL)
# measured up to 1.3e-12 on these models and 3.1e-11 on full-lrp's. 1e-9 keeps
# over 30x above the EPYC figures; images mixed within a batch would be off by order 1.
BATCH_TOLERANCE = 1e-9


def prepared(model, head_gain):
    """Random biases; the head scaled by ``head_gain``.

    The head gain scales every dA_l (LRP relevance is scale-free), so that
    ``mean_h((dA * RA)+)`` is not negligible next to the identity in
    ``rownorm(Abar + I)`` and the maps show the LRP part, not just I.
    """
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.3)
        model.head.weight.mul_(head_gain)
    return model.eval().double()


# name -> (model factory, query of docs/METHODS.md)
MODELS = {
    "class-token": (lambda: prepared(tiny_vit(), 1e3), ("token", 0)),
    "4-prefix-tokens": (lambda: prepared(tiny_vit(reg_tokens=3), 1e3), ("token", 0)),
    "layer-scale": (lambda: prepared(tiny_vit(init_values=0.5), 1e3), ("token", 0)),
    "mean-pooled": (lambda: prepared(tiny_vit(global_pool="avg"), 1e5), ("mean", 1)),
    "mean-pooled-4-registers": (lambda: prepared(tiny_vit(class_token=False, reg_tokens=4, global_pool="avg"), 1e5),
                                ("mean", 4)),
    "mean-pooled-with-prefix": (lambda: prepared(tiny_vit(global_pool="avg", pool_include_prefix=True), 1e5),
                                ("mean", 0)),
}


# -- helpers -------------------------------------------------------------------

def run_lrp(model, images, targets):
    """The package's LRP pass on one forward pass (no second forward)."""
    view = timm_lrp_view(model, "tiny")
    tower = adapter_for(model).towers[0]
    with tower.attention_capture(None) as probe, view.capture(0) as capture, torch.no_grad():
        model(images)
    with torch.no_grad():
        return lrp_pass(view, capture.activations(), probe.attention_probs, targets)


@pytest.fixture
def images():
    torch.manual_seed(123)
    return torch.randn(3, 3, 32, 32, dtype=torch.float64)


@pytest.fixture(params=list(MODELS))
def model_case(request):
    factory, query = MODELS[request.param]
    return factory(), query


# -- the tests -------------------------------------------------------------------

@pytest.mark.numerics
def test_attention_relevance_matches_reference(model_case, images):
    model, _ = model_case
    for b in range(images.shape[0]):  # each image alone: the batch's own test is below
        result = run_lrp(model, images[b:b + 1], TARGETS[b:b + 1])
        assert len(result.attention_relevance) == len(model.blocks)
        RA, input_relevance, _ = ref_lrp(model, images[b:b + 1], int(TARGETS[b]))
        for layer, expected in enumerate(RA):
            assert_close_scaled(result.attention_relevance[layer][0], expected, FLOAT64_TOLERANCE)
        assert_close_scaled(result.input_relevance[0], input_relevance, FLOAT64_TOLERANCE)


@pytest.mark.numerics
@pytest.mark.parametrize("start_layer", [0, 1, -1])
def test_map_matches_reference(model_case, images, start_layer):
    model, query = model_case
    references = []
    for b in range(images.shape[0]):  # each image alone: the batch's own test is below
        expected = ref_maps(model, images[b:b + 1], TARGETS[b:b + 1], query, start_layer)
        result = heatmap.explain(model, images[b:b + 1], "transformer-attribution", target=[int(TARGETS[b])],
                                 start_layer=start_layer)
        assert result.maps.dtype == torch.float64  # a float64 model is explained in float64
        assert_close_scaled(result.maps, expected, FLOAT64_TOLERANCE)
        references.append(expected)
    # the maps are not just the identity's query row: the LRP part shows
    expected = torch.cat(references)
    assert (expected - expected.mean(dim=(-2, -1), keepdim=True)).abs().amax() > 1e-3 * expected.abs().amax()


@pytest.mark.numerics
def test_several_targets_per_image_reuse_one_forward(images):
    factory, query = MODELS["class-token"]
    model = factory()
    forwards = []
    model.register_forward_pre_hook(lambda *_: forwards.append(1))
    targets = torch.tensor([[1, 3], [4, 0], [2, 2]])
    explainer = Driver(adapter_for(model), "transformer-attribution")
    for b in range(3):  # each image alone, with its two targets
        result = explainer.explain(images[b:b + 1], targets[b:b + 1])
        assert len(forwards) == b + 1
        for k in range(2):
            assert_close_scaled(result.maps[:, k], ref_maps(model, images[b:b + 1], targets[b:b + 1, k], query),
                                FLOAT64_TOLERANCE)


@pytest.mark.numerics
def test_relevance_is_conserved_through_every_residual_add(model_case, images):
    model, _ = model_case
    result = run_lrp(model, images, TARGETS)
    assert len(result.residual_sums) == 2 * len(model.blocks)
    for leaving, entering in result.residual_sums:
        assert leaving.shape == (3,)  # one sum per image, never over the batch
        # measured: 3.0e-9 native, 3.0e-9 portable (ATEN_CPU_CAPABILITY=default), the 1e-9
        # stabiliser's share; 1e-6 keeps over 300x
        assert (leaving - entering).abs().max() < 1e-6


@pytest.mark.numerics
def test_input_relevance_sums_to_the_start_relevance(model_case, images):
    # Start relevance 1.0 per image. With alpha = 1, beta = 0 and the bias
    # left out of Z, every Linear's Z is a sum of same-signed terms, so it
    # loses relevance only at outputs where Z == 0 exactly; the residual adds
    # are rescaled to keep their total, the products, the branch points and
    # the pooling are z-rules that conserve where the operand is non-zero.
    # What is left is the 1e-9 stabiliser, amplified where q.k is near zero:
    # measured: 7.9e-8 native, 7.9e-8 portable (ATEN_CPU_CAPABILITY=default) on
    # these models, so 1e-5 keeps a margin of over 100x and still catches a lost
    # share (a missing branch or an unhalved operand changes the sum by >= 1e-2).
    model, _ = model_case
    result = run_lrp(model, images, TARGETS)
    sums = result.input_relevance.sum(dim=(1, 2))
    assert (sums - 1.0).abs().max() < 1e-5


def test_attention_relevance_is_finite_and_shaped_like_the_attention(model_case, images):
    model, _ = model_case
    result = run_lrp(model, images, TARGETS)
    _, attentions = reference.manual_forward(model, images)
    for relevance, attention in zip(result.attention_relevance, attentions, strict=True):
        assert relevance.shape == attention.shape
        assert relevance.dtype == torch.float64
        assert torch.isfinite(relevance).all()


@pytest.mark.numerics
def test_batch_equals_one_by_one_and_runs_repeat_exactly(model_case, images):
    model, _ = model_case
    targets = [0, 2, 4]
    batch = heatmap.explain(model, images, "transformer-attribution", target=targets)
    singles = torch.cat([heatmap.explain(model, images[i:i + 1], "transformer-attribution",
                                         target=[targets[i]]).maps for i in range(3)])
    for b in range(3):
        assert_close_scaled(batch.maps[b], singles[b], BATCH_TOLERANCE)
    again = heatmap.explain(model, images, "transformer-attribution", target=targets)
    assert batch.maps.numpy().tobytes() == again.maps.numpy().tobytes()


def test_default_target_is_top1(images):
    model = MODELS["class-token"][0]()
    result = heatmap.explain(model, images, "transformer-attribution")
    assert result.targets.tolist() == model(images).argmax(dim=1).tolist()


def test_attention_pool_head_is_refused():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5,
                              global_pool="map").eval()
    assert "attn_pool" in unsupported_operation(model)
    with pytest.raises(UnsupportedModelError, match="attn_pool.*not covered by the LRP rules"):
        check_supported(model, "tiny-map")


def distilled_vit():
    torch.manual_seed(0)
    return sharpen_attention(VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                                        num_heads=4, num_classes=5))


@pytest.mark.parametrize("factory,operation", [
    (lambda: tiny_vit(qk_norm=True), "q_norm"),
    (distilled_vit, "distillation head"),
    (lambda: tiny_vit(mlp_layer=SwiGLU), "gated MLP SwiGLU"),
])
def test_unsupported_structure_is_refused_before_any_work(factory, operation, images):
    model = factory()
    forwards = []
    model.register_forward_pre_hook(lambda *_: forwards.append(1))
    with pytest.raises(HeatmapError) as error:
        heatmap.explain(model, images, "transformer-attribution", target=0)
    message = str(error.value)
    assert operation in message and "transformer-attribution" in message
    working = [method.name for method in methods().values() if method.lrp_rules is None]
    assert f"methods that do work for this model: {', '.join(working)}" in message
    assert "\n" not in message
    assert not forwards  # refused before the forward pass
