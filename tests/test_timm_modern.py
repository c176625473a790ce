"""timm's modern ViTs against a float64 reference of docs/METHODS.md.

EVA02 (RoPE, SwiGLU, RMSNorm, q/k norms), DINOv3 (registers, DINOv3 RoPE,
layer scale, mean pooling, a non-square grid), SigLIP's "MAP" head on a
``VisionTransformer``, Perception Encoder (an ``Eva`` with RoPE attention and
an attention-pool head with its own head count) and a ``NaFlexVit`` whose
head attends to the patches only. Every image is explained alone and compared
with the reference of that image (``helpers.modern_reference``: the forward
written by hand, the attention-pool layout of "Modern ViT parts" written
without vit-heatmap's code).
"""

from __future__ import annotations

import pytest
import torch
from timm.layers import RmsNorm
from timm.models.eva import Eva
from timm.models.naflexvit import NaFlexVit
from timm.models.vision_transformer import VisionTransformer

import heatmap
from heatmap.errors import UsageError
from helpers.modern_reference import Layers, discard_gap, forward, reinitialise, relative_error

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5)


def eva02(pool):
    torch.manual_seed(0)
    return Eva(**SMALL, global_pool=pool, use_rot_pos_emb=True, swiglu_mlp=True, scale_mlp=True, norm_layer=RmsNorm,
               qk_norm=True)


def dinov3():
    # as vit_small_patch16_dinov3: registers, DINOv3 RoPE (rotate-half), no absolute position embedding, layer
    # scale, any input size
    torch.manual_seed(0)
    return Eva(**SMALL, num_reg_tokens=4, global_pool="avg", use_rot_pos_emb=True, rope_type="dinov3",
               rope_rotate_half=True, rope_temperature=100, use_abs_pos_emb=False, init_values=1e-5,
               use_fc_norm=False, dynamic_img_size=True)


def siglip_vit():
    # as vit_base_patch16_siglip_224: no class token, the attention-pool head
    torch.manual_seed(0)
    return VisionTransformer(**SMALL, class_token=False, global_pool="map")


def perception_encoder():
    # as vit_pe_core_*: RoPE attention, a norm before the blocks, an attention-pool head with fewer heads than the
    # blocks (its layer is [B, 2, N', N'] beside the blocks' [B, 4, N', N'])
    torch.manual_seed(0)
    return Eva(**SMALL, global_pool="map", attn_type="rope", use_pre_transformer_norm=True, use_rot_pos_emb=True,
               rope_grid_offset=1.0, rope_grid_indexing="xy", attn_pool_num_heads=2, attn_pool_mlp_ratio=2.0)


def naflex():
    # class token and two registers that the head does not attend to (pool_include_prefix=False)
    torch.manual_seed(0)
    return NaFlexVit(img_size=32, num_classes=5, patch_size=8, embed_dim=32, depth=2, num_heads=4, global_pool="map",
                     class_token=True, reg_tokens=2, pos_embed_grid_size=(4, 4))


# name -> (factory, image size (H, W), the part the LRP refusal names)
MODELS = {
    "eva02-token": (lambda: eva02("token"), (32, 32), "RoPE"),
    "eva02-avg": (lambda: eva02("avg"), (32, 32), "RoPE"),
    "dinov3-registers-avg-3x5": (dinov3, (24, 40), "RoPE"),
    "siglip-vit-map": (siglip_vit, (32, 32), "attention-pool head"),
    "pe-eva-map": (perception_encoder, (32, 32), "attention-pool head"),
    "naflex-map-patches-only": (naflex, (32, 32), "attention-pool head"),
}
POOLED = {"siglip-vit-map", "pe-eva-map", "naflex-map-patches-only"}

# The methods the contract covers for these models, in the order of the refusals' list.
WORKING = ["attention-gradcam", "chefer-generic", "grad-rollout", "legrad", "raw-attention", "rollout"]
LRP = ["transformer-attribution", "partial-lrp", "full-lrp"]

CASES = [
    ("rollout", {}),
    ("rollout", {"discard_ratio": 0.5, "head_fusion": "max"}),
    ("rollout", {"discard_ratio": 0.5, "head_fusion": "mean", "start_layer": 1}),
    ("grad-rollout", {}),
    ("grad-rollout", {"discard_ratio": 0.0, "start_layer": -1}),
    ("chefer-generic", {}),
    ("chefer-generic", {"start_layer": -1}),
    ("raw-attention", {}),
    ("attention-gradcam", {}),
    ("legrad", {}),
    ("legrad", {"start_layer": 0}),
]
TARGETS = [0, 2, 4]  # each map of each image non-constant (attention-gradcam clamps some to all 0)

# Largest relative error (max|a - b| / max|b|) of one image's float64 map
# against its float64 reference, over every model and case here. measured:
# 7.5e-15 native, 7.1e-15 portable (ATEN_CPU_CAPABILITY=default); 1e-12
# keeps a margin of over 100x.
FLOAT64_TOLERANCE = 1e-12
# The score the explanation reads against the reference's logit (relative,
# one number, so a logit near 0 shows the largest). measured: 1.4e-14 native,
# 1.6e-15 portable; 1e-12 keeps over 70x.
SCORE_TOLERANCE = 1e-12
# A batch of three against its images one at a time, every working method.
# measured: 6.5e-16 native, 7.0e-16 portable; 1e-12 keeps over 1000x.
BATCH_TOLERANCE = 1e-12
# A discard's largest dropped and smallest kept entries must differ by more
# than this (relative to the layer's largest entry) so that round-off cannot
# swap them; the smallest gap measured is 1.3e-5 (both ways). A boundary among
# exact zeros is no tie that decides anything (a zero set to zero): it is where
# grad-rollout's default 0.9 falls in the last block of the class-token EVA02,
# whose rows other than the class token's get no gradient; the probe's padding
# and the head layer's empty rows are such zeros too.
DISCARD_GAP = 1e-9


def build(name):
    factory, size, _ = MODELS[name]
    model = reinitialise(factory(), seed=1).double()
    generator = torch.Generator().manual_seed(123)
    images = torch.randn(3, 3, *size, generator=generator, dtype=torch.float64)
    return model, images, (size[0] // 8, size[1] // 8)


@pytest.fixture(scope="module")
def models():
    return {name: build(name) for name in MODELS}


@pytest.fixture(scope="module")
def references(models):
    """Per model, per image: the reference's layers of that image alone."""
    return {name: [Layers(model, images[b:b + 1], TARGETS[b], grid) for b in range(3)]
            for name, (model, images, grid) in models.items()}


@pytest.mark.numerics
@pytest.mark.parametrize("method,options", CASES, ids=lambda case: str(case))
@pytest.mark.parametrize("name", MODELS)
def test_maps_match_the_reference(name, method, options, models, references):
    model, images, grid = models[name]
    for b in range(3):  # each image alone: the batch's own test is below
        layers = references[name][b]
        expected = layers.reference(method, options)
        if "discard_ratio" in options or method == "grad-rollout":
            ratio = options.get("discard_ratio", 0.9)
            assert discard_gap(layers.fused(method, options), ratio) > DISCARD_GAP
        result = heatmap.explain(model, images[b:b + 1], method, target=[TARGETS[b]], **options)
        assert result.maps.shape == (1, *grid)
        assert result.maps.dtype == torch.float64
        assert relative_error(result.maps[0], expected) < FLOAT64_TOLERANCE
        assert relative_error(result.scores, layers.logit.detach().reshape(1)) < SCORE_TOLERANCE
        # the map can fail: it is not constant
        assert expected.max() - expected.min() > 1e-3 * expected.abs().max()


@pytest.mark.numerics
@pytest.mark.parametrize("name", sorted(POOLED))
def test_the_layout_is_the_one_the_contract_gives(name, references):
    """What makes the layout matter, so that the reference tests above can tell layouts apart."""
    layers = references[name][0]
    # the head is row 0 of the last layer, a distribution over the tokens it attends to; every other row is 0
    head = layers.A[-1]
    torch.testing.assert_close(head[:, 0].sum(dim=-1), torch.ones(head.shape[0], dtype=head.dtype))
    assert not head[:, 1:].any()
    # the probe's row and column of every block are 0 (not the probe attending to itself)
    for block in layers.A[:-1]:
        assert not block[:, 0].any() and not block[:, :, 0].any()
    # chefer-generic at -1 is the head alone, which differs from all layers
    assert relative_error(layers.chefer_generic(start_layer=-1), layers.chefer_generic()) > 1e-3
    # rollout's discard counts the padded zeros: with the probe attending to itself in each block and the
    # identity in the head's other rows (a layout equal to this one without a discard) the map moves
    other = Layers.__new__(Layers)
    vars(other).update(vars(layers))
    other.A = [block.clone() for block in layers.A]
    for block in other.A[:-1]:
        block[:, 0, 0] = 1.0
    other.A[-1][:, 1:, 1:] = torch.eye(layers.size - 1, dtype=head.dtype)
    assert relative_error(other.rollout(), layers.rollout()) < 1e-14
    options = {"discard_ratio": 0.5, "head_fusion": "max"}
    assert relative_error(other.rollout(**options), layers.rollout(**options)) > 1e-3


@pytest.mark.numerics
def test_the_naflex_head_leaves_the_prefix_tokens_out(references):
    layers = references["naflex-map-patches-only"][0]
    assert not layers.A[-1][:, 0, :layers.prefix].any()
    assert (layers.A[-1][:, 0, layers.prefix:] > 0).all()


@pytest.mark.numerics
@pytest.mark.parametrize("name", MODELS)
def test_attention_is_not_near_uniform(name, models):
    model, images, _ = models[name]
    with torch.no_grad():
        _, _, attentions, head_probs = forward(model, images)
    for probs in attentions + ([head_probs] if head_probs is not None else []):
        assert probs.amax(dim=-1).mean() > 2.0 / probs.shape[-1]


@pytest.mark.numerics
@pytest.mark.parametrize("name", MODELS)
def test_batch_equals_one_by_one(name, models):
    model, images, _ = models[name]
    for method in WORKING:
        batch = heatmap.explain(model, images, method, target=TARGETS).maps
        singles = torch.cat([heatmap.explain(model, images[b:b + 1], method, target=[TARGETS[b]]).maps
                             for b in range(3)])
        assert relative_error(batch, singles) < BATCH_TOLERANCE, method


def gated_eva():
    # a gated MLP without RoPE or an attention-pool head, so that the refusal has to name the MLP
    torch.manual_seed(0)
    return Eva(**SMALL, global_pool="token", swiglu_mlp=True)


@pytest.mark.parametrize("method", LRP)
@pytest.mark.parametrize("name", [*MODELS, "gated-mlp"])
def test_lrp_methods_are_refused_before_any_work_naming_the_part(name, method):
    model, part = (gated_eva(), "gated MLP") if name == "gated-mlp" else (MODELS[name][0](), MODELS[name][2])
    size = MODELS[name][1] if name in MODELS else (32, 32)
    forwards = []
    model.register_forward_pre_hook(lambda *_: forwards.append(1))
    with pytest.raises(heatmap.UnsupportedModelError) as error:
        heatmap.explain(model, torch.zeros(1, 3, *size), method, target=0)
    message = str(error.value)
    assert part in message and method in message
    assert message.endswith("methods that do work for this model: " + ", ".join(WORKING))
    assert "\n" not in message
    assert not forwards  # refused before the forward pass


@pytest.mark.parametrize("name", sorted(POOLED))
def test_legrad_on_the_head_alone_is_refused(name, models):
    model, images, _ = models[name]
    with pytest.raises(UsageError) as error:
        heatmap.explain(model, images[:1], "legrad", target=0, start_layer=-1)
    assert "attention-pool head" in str(error.value)
