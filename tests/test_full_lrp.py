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
  comparisons above explain each image alone) and determinism;
- a model whose patch embedding is not one stride = kernel convolution is
  refused before any forward pass, naming why and what works;
- CLIP: full-lrp explains the image tower only (no text relevance).

The references share no code with the library: the blocks' pass is
``helpers.lrp_reference`` (timm, autograd for every gradient-times-input
rule) or written out in ``helpers.full_lrp_reference`` (open_clip), and the
pixel step is written there with ``conv2d`` / ``conv_transpose2d``. Everything runs in float64 (a float64
model is explained in float64).
"""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import heatmap
from heatmap.demo.conv_stem import ConvStemPatchEmbed, conv_stem
from heatmap.errors import UnsupportedModelError
from helpers.full_lrp_reference import ref_clip, ref_timm, ref_z_beta
from helpers.lrp_reference import (
    relative_error,
)
from helpers.models import TEXTS, tiny_clip, tiny_vit, tokens_of

# Largest relative error (max |a - b| / max |b|) of one image's map (CLIP: one
# image and its texts) against the one-image reference, over every case here.
# measured: 2.8e-15 native, 1.6e-15 portable (ATEN_CPU_CAPABILITY=default), both
# the CLIP class-token tower (the timm cases 0 both ways); 1e-12 keeps over 100x and
# still sees the z^B rule's +1e-9 stabiliser moved (Za is of order 1 here).
FLOAT64_TOLERANCE = 1e-12
# A batch against its images one at a time: the batch's shape changes how
# float64 matrix products are blocked and LRP's divisions amplify that.
# measured: 3.5e-16 native, 0 portable on this Xeon; an AMD EPYC (MKL)
# measured up to 3.1e-11 (no_embed_class). 1e-9 keeps over 30x above the
# EPYC figure; images mixed within a batch would be off by order 1.
BATCH_TOLERANCE = 1e-9


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


@pytest.mark.numerics
@pytest.mark.parametrize("name", list(TIMM_CASES))
def test_timm_maps_match_the_reference(name):
    model, images = timm_model(name), images_of(TIMM_CASES[name][1])
    maps = []
    for b in range(3):  # each image alone: the batch's own test is below
        result = heatmap.explain(model, images[b:b + 1], "full-lrp", target=[TARGETS[b]])
        assert result.maps.shape == (1, *images.shape[-2:]) and result.maps.dtype == torch.float64
        expected = ref_timm(model, images[b:b + 1], TARGETS[b])
        assert relative_error(result.maps[0], expected) < FLOAT64_TOLERANCE
        maps.append(result.maps)
    # pixel level: the map varies within a patch, it is not the grid upsampled
    maps = torch.cat(maps)
    assert (maps[:, :8, :8] - maps[:, :1, :1]).abs().amax() > 1e-3 * maps.abs().amax()


@pytest.mark.numerics
def test_the_position_step_shows_in_the_maps():
    # Guards the comparison above: a pass that skipped the position add's
    # share (passing R on unchanged) would be off by far more than the tolerance.
    model, images = timm_model("class-token"), images_of((32, 32), count=1)
    with_share = ref_timm(model, images, TARGETS[0])
    without = ref_timm(model, images, TARGETS[0], with_position=False)
    assert relative_error(without, with_share) > 1e-2


CLIP_CASES = {"class-token": "tok", "mean-pooled": "avg"}


@pytest.mark.numerics
@pytest.mark.parametrize("name", list(CLIP_CASES))
def test_clip_image_maps_match_the_reference(name):
    model = with_random_parameters(tiny_clip(pool_type=CLIP_CASES[name]))
    images = images_of((32, 32), count=2, seed=5)
    with torch.no_grad():
        text_embeddings = model.encode_text(tokens_of(TEXTS))
    for b in range(2):  # each image alone, with the three texts
        result = heatmap.explain(model, images[b:b + 1], "full-lrp", texts=TEXTS)
        assert result.maps.shape == (1, 3, 32, 32) and result.maps.dtype == torch.float64
        assert result.text_relevance is None  # full-lrp explains the image tower only
        for t in range(3):
            expected = ref_clip(model, images[b:b + 1], text_embeddings[t])
            assert relative_error(result.maps[0, t], expected) < FLOAT64_TOLERANCE


# -- the z^B rule by hand ----------------------------------------------------------------

@pytest.mark.numerics
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
    # measured: 2.2e-16 native, 2.2e-16 portable (largest elementwise relative error); rtol 1e-14 keeps 45x
    assert torch.allclose(ref_z_beta(image, weight, (2, 2), R), expected, rtol=1e-14, atol=0)
    library = patch_embedding_relevance(image, weight, (2, 2), R)
    assert torch.allclose(library, expected, rtol=1e-14, atol=0)
    # the bounds are per image: a second image with a wider range changes nothing for the first
    wider = torch.cat([image, image * 10])
    library = patch_embedding_relevance(wider, weight, (2, 2), R.expand(2, -1, -1, -1))
    assert torch.allclose(library[:1], expected, rtol=1e-14, atol=0)


# -- batches and determinism ---------------------------------------------------------------

@pytest.mark.numerics
def test_a_batch_equals_its_images_one_at_a_time_and_runs_repeat():
    model, images = timm_model("4-prefix-tokens"), images_of((32, 32))
    batch = heatmap.explain(model, images, "full-lrp", target=TARGETS).maps
    singles = torch.cat([heatmap.explain(model, images[b:b + 1], "full-lrp", target=[TARGETS[b]]).maps
                         for b in range(3)])
    for b in range(3):
        assert relative_error(batch[b], singles[b]) < BATCH_TOLERANCE
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
