"""full-lrp equals a plain, module-by-module reading of docs/METHODS.md, down to the pixels.

What is tested:
- the maps of ``heatmap.explain(..., "full-lrp")`` on timm ViTs (class token,
  register tokens, mean pooling, a non-square grid, ``no_embed_class``) and on
  the open_clip image tower (class token, mean pooling) against an independent
  float64 reference: the LRP pass under the ORIGINAL rules from the start
  relevance through every block, then the position-embedding add (the tokens'
  share), the patch tokens back on the grid, the bounded z^B rule through the
  patch convolution, summed over the colour channels;
- the z^B rule worked out by hand on a 2x4 image of two patches;
- per-image independence (a batch equals its images one at a time; the
  comparisons above also run batches against a one-image reference) and determinism;
- a model whose patch embedding is not one stride = kernel convolution is
  refused before any forward pass, naming why and what works;
- CLIP: full-lrp explains the image tower only (no text relevance).

The references share no code with the library: the blocks' pass is
``helpers.lrp_reference`` (timm, autograd for every gradient-times-input
rule) or written out below (open_clip), and the pixel step is written here
with ``conv2d`` / ``conv_transpose2d``. Everything runs in float64 (a float64
model is explained in float64).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

import heatmap
from heatmap.demo.conv_stem import ConvStemPatchEmbed, conv_stem
from heatmap.errors import UnsupportedModelError
from helpers.lrp_reference import (
    ref_add_original,
    ref_clone,
    ref_linear_original,
    ref_lrp,
    ref_product,
    ref_safe_divide,
    ref_select,
    relative_error,
)
from helpers.models import TEXTS, tiny_clip, tiny_vit, tokens_of

# Largest relative error (max |a - b| / max |b|, per image and text) measured
# over every case here: 2.5e-15 (the CLIP class-token tower; the timm cases at
# most 6.2e-16); 1e-12 keeps a margin of over 100x and still sees the z^B
# rule's +1e-9 stabiliser moved (Za is of order 1 here).
FLOAT64_TOLERANCE = 1e-12


def with_random_parameters(model: torch.nn.Module) -> torch.nn.Module:
    """Random biases everywhere and a position embedding that is not negligible; float64.

    A rule that wrongly uses a bias must show. timm initialises biases to 0
    and the position embedding with std 0.02, so ``t * safe_divide(R, t + pos)``
    would be ``R`` to 1e-2 and leaving the position step out might pass; a
    std of 1 makes the tokens' share differ from R.
    """
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            for name in ("bias", "in_proj_bias"):
                bias = getattr(module, name, None)
                if isinstance(bias, torch.nn.Parameter):
                    bias.copy_(torch.randn(bias.shape, generator=generator) * 0.3)
        embedding = model.visual.positional_embedding if hasattr(model, "visual") else model.pos_embed
        embedding.copy_(torch.randn(embedding.shape, generator=generator))
    return model.double().eval()


# -- the pixel step (written here, not the library's) ---------------------------

def ref_z_beta(image, weight, stride, R):
    """The bounded z^B rule through a bias-free convolution, ONE image ``[1, 3, H, W]``.

    ``L``/``H`` are the image's smallest and largest value over channels and
    pixels; ``R`` is ``[1, D, gh, gw]``; the result is ``[1, 3, H, W]``.
    """
    W = weight.detach()
    W_pos, W_neg = W.clamp(min=0), W.clamp(max=0)
    low = torch.full_like(image, float(image.min()))
    high = torch.full_like(image, float(image.max()))
    Za = (F.conv2d(image, W, stride=stride) - F.conv2d(low, W_pos, stride=stride)
          - F.conv2d(high, W_neg, stride=stride) + 1e-9)
    S = R / Za
    # every image size here is a whole number of patches, so convT gives back [H, W]
    back = [F.conv_transpose2d(S, kernel, stride=stride) for kernel in (W, W_pos, W_neg)]
    assert back[0].shape == image.shape
    return image * back[0] - low * back[1] - high * back[2]


def ref_pixels(patches, position, R_patches, grid, image, weight, stride):
    """The patch tokens' relevance at ``x = t + pos`` -> the pixels' map ``[H, W]`` of one image.

    ``patches`` ``[G, D]`` are the patch convolution's outputs (bias included:
    the forward's ``t``), ``position`` ``[G, D]`` their position embedding.
    """
    share = patches * ref_safe_divide(R_patches, patches + position)  # the add: t's share, not rescaled
    on_grid = share.T.reshape(1, share.shape[1], *grid)  # row-major patch tokens
    return ref_z_beta(image, weight, stride, on_grid)[0].sum(dim=0)


def ref_timm(model, image, target, with_position=True):
    """full-lrp of one timm image ``[1, 3, H, W]`` for one class."""
    # the blocks, head and pooling under the ORIGINAL rules; R: [N, D] at block 0's input
    _, R, _ = ref_lrp(model, image, target, linear=ref_linear_original, add=ref_add_original)
    with torch.no_grad():
        patches = model.patch_embed(image)[0]  # [G, D], conv bias included
    count = patches.shape[0]
    position = model.pos_embed[0, -count:].detach()  # the patches' entries come last either way
    if not with_position:
        position = torch.zeros_like(position)
    proj = model.patch_embed.proj
    grid = (image.shape[-2] // proj.stride[0], image.shape[-1] // proj.stride[1])
    return ref_pixels(patches, position, R[-count:], grid, image, proj.weight, proj.stride)


# -- the open_clip image tower, written out -----------------------------------------

def ref_clip_forward(visual, image):
    """One image through the tower by hand, keeping what the rules read."""
    with torch.no_grad():
        patches = visual.conv1(image).flatten(2).transpose(1, 2)  # [1, G, D]; conv1 has no bias
        x = torch.cat([visual.class_embedding.expand(1, 1, -1), patches], dim=1) + visual.positional_embedding
        x = visual.ln_pre(x)
        kept = []
        for block in visual.transformer.resblocks:
            attn = block.attn
            _, N, D = x.shape
            heads = attn.num_heads
            h = block.ln_1(x)
            q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
            q, k, v = (t.reshape(1, N, heads, D // heads).transpose(1, 2) for t in (q, k, v))
            A = ((q * (D // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)  # q kept unscaled
            merged = (A @ v).transpose(1, 2).reshape(1, N, D)
            attn_out = block.ls_1(attn.out_proj(merged))
            mid = x + attn_out
            h2 = block.ln_2(mid)
            hidden = block.mlp.gelu(block.mlp.c_fc(h2))
            mlp_out = block.ls_2(block.mlp.c_proj(hidden))
            kept.append(dict(x=x, h=h, q=q, k=k, v=v, A=A, merged=merged, attn_out=attn_out,
                             mid=mid, h2=h2, hidden=hidden, mlp_out=mlp_out))
            x = mid + mlp_out
        tokens = visual.ln_post(x)  # ln_post before the pooling (open_clip's default)
        pooled = tokens[:, 0] if visual.pool_type == "tok" else tokens[:, 1:].mean(dim=1)
    return patches[0], kept, tokens, pooled, pooled @ visual.proj


def ref_clip(model, image, text_embedding):
    """full-lrp of one CLIP image ``[1, 3, H, W]`` towards one text embedding."""
    visual = model.visual
    patches, kept, tokens, pooled, embedding = ref_clip_forward(visual, image)
    scale = model.logit_scale.exp().detach()
    R_e = embedding * (scale / embedding.norm()) * text_embedding / text_embedding.norm()
    R_pooled = ref_linear_original(pooled, visual.proj.T, R_e)  # the projection: a Linear with weight proj^T
    R = torch.zeros_like(tokens)
    if visual.pool_type == "tok":  # ln_post: identity, then IndexSelect of the class token
        R[0, 0] = ref_select(tokens[0, 0], R_pooled[0])
    else:  # the z-rule of a mean over the patch tokens (not in METHODS.md; the library's choice)
        total = tokens[0, 1:].sum(dim=0)
        for i in range(1, tokens.shape[1]):
            R[0, i] = tokens[0, i] * ref_safe_divide(R_pooled[0], total)
    for block, f in zip(reversed(visual.transformer.resblocks), reversed(kept), strict=True):
        R_mid, R_mlp = ref_add_original(f["mid"], f["mlp_out"], R)
        R_hidden = ref_linear_original(f["hidden"], block.mlp.c_proj.weight, R_mlp)  # gelu: identity
        R = ref_clone(f["mid"], R_mid, ref_linear_original(f["h2"], block.mlp.c_fc.weight, R_hidden))
        R_x, R_attn = ref_add_original(f["x"], f["attn_out"], R)
        R_merged = ref_linear_original(f["merged"], block.attn.out_proj.weight, R_attn)
        heads, N = block.attn.num_heads, R_merged.shape[1]
        R_A, R_v = ref_product(f["A"], f["v"], R_merged.reshape(1, N, heads, -1).transpose(1, 2))
        R_q, R_kT = ref_product(f["q"], f["k"].transpose(-2, -1), R_A)  # softmax: identity
        R_qkv = torch.cat([t.transpose(1, 2).reshape(1, N, -1) for t in (R_q, R_kT.transpose(-2, -1), R_v)], dim=-1)
        R = ref_clone(f["x"], R_x, ref_linear_original(f["h"], block.attn.in_proj_weight, R_qkv))
    count = patches.shape[0]
    position = visual.positional_embedding[-count:].detach()  # ln_pre: identity; the class token is dropped
    conv = visual.conv1
    grid = (image.shape[-2] // conv.stride[0], image.shape[-1] // conv.stride[1])
    return ref_pixels(patches, position, R[0, -count:], grid, image, conv.weight, conv.stride)


# -- the cases -------------------------------------------------------------------------

def images_of(size, count=3, seed=123):
    torch.manual_seed(seed)
    return torch.randn(count, 3, *size, dtype=torch.float64)


TIMM_CASES = {
    "class-token": (dict(), (32, 32)),
    "4-prefix-tokens": (dict(reg_tokens=3), (32, 32)),
    "mean-pooled": (dict(global_pool="avg"), (32, 32)),
    "non-square-3x5-grid": (dict(img_size=(24, 40)), (24, 40)),
    "no-embed-class": (dict(no_embed_class=True, reg_tokens=2), (32, 32)),
}
TARGETS = [1, 4, 2]


def timm_model(name):
    overrides, _ = TIMM_CASES[name]
    return with_random_parameters(tiny_vit(**overrides))


@pytest.mark.parametrize("name", list(TIMM_CASES))
def test_timm_maps_match_the_reference(name):
    model, images = timm_model(name), images_of(TIMM_CASES[name][1])
    result = heatmap.explain(model, images, "full-lrp", target=TARGETS)
    assert result.maps.shape == (3, *images.shape[-2:]) and result.maps.dtype == torch.float64
    for b in range(3):
        expected = ref_timm(model, images[b:b + 1], TARGETS[b])
        assert relative_error(result.maps[b], expected) < FLOAT64_TOLERANCE
    # pixel level: the map varies within a patch, it is not the grid upsampled
    assert (result.maps[:, :8, :8] - result.maps[:, :1, :1]).abs().amax() > 1e-3 * result.maps.abs().amax()


def test_the_position_step_shows_in_the_maps():
    # Guards the comparison above: a pass that skipped the position add's
    # share (passing R on unchanged) would be off by far more than the tolerance.
    model, images = timm_model("class-token"), images_of((32, 32), count=1)
    with_share = ref_timm(model, images, TARGETS[0])
    without = ref_timm(model, images, TARGETS[0], with_position=False)
    assert relative_error(without, with_share) > 1e-2


CLIP_CASES = {"class-token": "tok", "mean-pooled": "avg"}


@pytest.mark.parametrize("name", list(CLIP_CASES))
def test_clip_image_maps_match_the_reference(name):
    model = with_random_parameters(tiny_clip(pool_type=CLIP_CASES[name]))
    images = images_of((32, 32), count=2, seed=5)
    result = heatmap.explain(model, images, "full-lrp", texts=TEXTS)
    assert result.maps.shape == (2, 3, 32, 32) and result.maps.dtype == torch.float64
    assert result.text_relevance is None  # full-lrp explains the image tower only
    with torch.no_grad():
        text_embeddings = model.encode_text(tokens_of(TEXTS))
    for b in range(2):
        for t in range(3):
            expected = ref_clip(model, images[b:b + 1], text_embeddings[t])
            assert relative_error(result.maps[b, t], expected) < FLOAT64_TOLERANCE


# -- the z^B rule by hand ----------------------------------------------------------------

def test_z_beta_rule_worked_by_hand():
    from heatmap.explainers.lrp import patch_embedding_relevance  # this test only: the rule itself

    # One image [1, 3, 2, 4]: two 2x2 patches; one output channel, stride 2.
    image = torch.tensor([[[1.0, -2.0, 0.0, 1.0], [0.5, 3.0, -1.0, 2.0]],
                          [[-1.0, 4.0, 2.0, 0.0], [0.0, -0.5, 1.0, -2.0]],
                          [[2.0, 1.0, -3.0, 0.5], [-3.0, 0.25, 0.0, 1.0]]], dtype=torch.float64)[None]
    weight = torch.tensor([[[1.0, -1.0], [0.5, 0.0]],
                           [[-2.0, 1.0], [0.25, -0.5]],
                           [[0.0, 0.5], [-1.0, 2.0]]], dtype=torch.float64)[None]
    R = torch.tensor([1.0, 2.0], dtype=torch.float64).reshape(1, 1, 1, 2)
    # L = -3, H = 4 over the WHOLE image (not per patch). Each pixel's share is
    # z = x w - L w+ - H w-: (x + 3) w where w > 0, (x - 4) w where w < 0, 0 where w = 0.
    z_left = torch.tensor([[[4.0, 6.0], [1.75, 0.0]],      # (1+3)1, (-2-4)(-1), (0.5+3)0.5, 0
                           [[10.0, 7.0], [0.75, 2.25]],    # (-1-4)(-2), (4+3)1, (0+3)0.25, (-0.5-4)(-0.5)
                           [[0.0, 2.0], [7.0, 6.5]]], dtype=torch.float64)  # 0, (1+3)0.5, (-3-4)(-1), (0.25+3)2
    z_right = torch.tensor([[[3.0, 3.0], [1.0, 0.0]],      # (0+3)1, (1-4)(-1), (-1+3)0.5, 0
                            [[4.0, 3.0], [1.0, 3.0]],      # (2-4)(-2), (0+3)1, (1+3)0.25, (-2-4)(-0.5)
                            [[0.0, 1.75], [4.0, 8.0]]], dtype=torch.float64)  # 0, (0.5+3)0.5, (0-4)(-1), (1+3)2
    # Za = sum of z + 1e-9 per patch: 47.25 and 31.75; each pixel gets R * z / Za
    expected = torch.cat([1.0 * z_left / (47.25 + 1e-9), 2.0 * z_right / (31.75 + 1e-9)], dim=-1)[None]
    assert torch.allclose(ref_z_beta(image, weight, (2, 2), R), expected, rtol=1e-14, atol=0)
    library = patch_embedding_relevance(image, weight, (2, 2), R)
    assert torch.allclose(library, expected, rtol=1e-14, atol=0)
    # the bounds are per image: a second image with a wider range changes nothing for the first
    wider = torch.cat([image, image * 10])
    library = patch_embedding_relevance(wider, weight, (2, 2), R.expand(2, -1, -1, -1))
    assert torch.allclose(library[:1], expected, rtol=1e-14, atol=0)


# -- batches and determinism ---------------------------------------------------------------

def test_a_batch_equals_its_images_one_at_a_time_and_runs_repeat():
    model, images = timm_model("4-prefix-tokens"), images_of((32, 32))
    batch = heatmap.explain(model, images, "full-lrp", target=TARGETS).maps
    singles = torch.cat([heatmap.explain(model, images[b:b + 1], "full-lrp", target=[TARGETS[b]]).maps
                         for b in range(3)])
    for b in range(3):
        assert relative_error(batch[b], singles[b]) < FLOAT64_TOLERANCE
    again = heatmap.explain(model, images, "full-lrp", target=TARGETS).maps
    assert batch.numpy().tobytes() == again.numpy().tobytes()


# -- what full-lrp refuses ---------------------------------------------------------------

def conv_stem_vit():
    """A timm ViT whose patch embedding is the demo's convolutional stem (ConvStemPatchEmbed)."""
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5,
                             embed_layer=ConvStemPatchEmbed).eval()


def stem_in_plain_patch_embed():
    """timm's own PatchEmbed with its projection replaced by a convolutional stem."""
    model = tiny_vit()
    model.patch_embed.proj = conv_stem(3, 32)
    return model.eval()


def stem_in_clip():
    """The tiny CLIP with a convolutional stem in conv1's place."""
    model = tiny_clip()
    model.visual.conv1 = conv_stem(3, 32)
    return model.eval()


REFUSED = {
    "ConvStemPatchEmbed": conv_stem_vit,
    "stem-as-PatchEmbed.proj": stem_in_plain_patch_embed,
    "stem-as-clip-conv1": stem_in_clip,
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_patch_embedding_other_than_one_convolution_is_refused_before_any_work(name):
    model = REFUSED[name]()
    forwards = []
    model.register_forward_pre_hook(lambda *_: forwards.append(1))
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(UnsupportedModelError) as error:
        if name.startswith("stem-as-clip"):
            heatmap.explain(model, images, "full-lrp", texts=TEXTS)
        else:
            heatmap.explain(model, images, "full-lrp", target=[0, 1])
    message = str(error.value)
    assert "convolutional stem" in message and "not supported for full-lrp" in message
    working = message.split("methods that do work for this model: ")[1].split(", ")
    assert "transformer-attribution" in working and "partial-lrp" in working and "full-lrp" not in working
    assert "\n" not in message
    assert not forwards  # refused before the forward pass


def test_the_shipped_demo_is_refused_with_what_works():
    demo = heatmap.load("demo")  # its patches are embedded by a convolutional stem
    with pytest.raises(UnsupportedModelError) as error:
        heatmap.explain(demo, torch.rand(1, 3, 64, 64), "full-lrp", target=[0])
    message = str(error.value)
    assert "convolutional stem" in message and "methods that do work for this model: " in message
    assert "transformer-attribution" in message.split("methods that do work")[1]
