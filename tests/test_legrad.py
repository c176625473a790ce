"""legrad equals a plain, float64 reading of docs/METHODS.md ("legrad").

For each block l from the start layer on, the score ``y_l`` read from that
block's output tokens (a classifier: the target logit of
``head(fc_norm(pool(norm(x_l))))`` with the model's own pooling; a CLIP image
tower: the cosine of ``ln_post(mean of ALL tokens of x_l) @ proj`` with the
unit text embedding), ``G_l = (d y_l / d A_l)+``, mean over heads, mean over
ALL query rows, patch columns reshaped to the grid; the map is the sum over
the blocks. The reference forms every block's attention by hand so that each
``A_l`` is a tensor in the graph, and differentiates each ``y_l`` on its own
with ``torch.autograd.grad``; it uses nothing of vit-heatmap but
``heatmap.explain``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import heatmap
from heatmap.errors import UsageError
from helpers import clip_reference
from helpers.models import TEXTS, random_images, tiny_clip, tiny_vit, tokens_of

# Largest relative error (max|a - b| / max|b|) of the float64 maps against the
# float64 references, measured over every case here: 5.1e-16 (the CLIPs; the
# ViTs are bit-equal); 1e-12 keeps a margin of over 1000x. A changed rule
# (no clamp, clamp after the head mean, the class-token row only, the CLIP
# read-out without the class token) is off by 6e-2 to 16.
FLOAT64_TOLERANCE = 1e-12


def relative_error(actual, expected):
    assert actual.shape == expected.shape
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-300))


def images_for(model, count, seed):
    """``count`` standard-normal float64 images of the model's input size."""
    height, width = model.patch_embed.img_size
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, height, width, generator=generator, dtype=torch.float64)


# -- the independent references ---------------------------------------------------

def vit_blocks(model, images):
    """Each block's output tokens x_l and attention probabilities A_l, both in the graph."""
    x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
    outputs, attentions = [], []
    for block in model.blocks:
        attn = block.attn
        h = block.norm1(x)
        B, N, C = h.shape
        qkv = attn.qkv(h).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        A = torch.softmax((q * attn.scale) @ k.transpose(-2, -1), dim=-1)
        x = x + block.ls1(attn.proj((A @ v).transpose(1, 2).reshape(B, N, C)))
        x = x + block.ls2(block.mlp(block.norm2(x)))
        outputs.append(x)
        attentions.append(A)
    return outputs, attentions


def vit_readout(model, x):
    """The logits the head reads from tokens x: norm, the model's own pooling, fc_norm, head."""
    tokens = model.norm(x)
    if model.global_pool == "token":
        pooled = tokens[:, 0]
    else:  # timm's mean pools the patch tokens only (pool_include_prefix is False here)
        assert model.global_pool == "avg" and not model.pool_include_prefix
        pooled = tokens[:, model.num_prefix_tokens:].mean(dim=1)
    return model.head(model.fc_norm(pooled))


def legrad_map(score_of_block, outputs, attentions, start, prefix, grid):
    """sum over l >= start of mean_h mean_q (d y_l / d A_l)+ at the patch columns, per image: [B, gh, gw]."""
    total = 0
    for layer in range(start % len(attentions), len(attentions)):
        y = score_of_block(outputs[layer])  # [B]; images never mix, so the sum's gradient is per image
        G, = torch.autograd.grad(y.sum(), attentions[layer], retain_graph=True)
        total = total + G.clamp(min=0).mean(dim=1).mean(dim=1)[:, prefix:]
    return total.reshape(-1, *grid)


def vit_reference(model, images, targets, start):
    outputs, attentions = vit_blocks(model, images)
    # the reference's last read-out is the model's own output (so the forward above is the model's)
    assert relative_error(vit_readout(model, outputs[-1]).detach(), model(images).detach()) < 1e-13
    rows = torch.arange(len(images))
    return legrad_map(lambda x: vit_readout(model, x)[rows, targets], outputs, attentions, start,
                      model.num_prefix_tokens, tuple(model.patch_embed.grid_size))


def clip_reference_maps(model, images, tokens, start):
    """[B, T, gh, gw]: LeGrad of each (image, text), from the image tower alone."""
    visual = model.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    outputs, attentions = [], []
    for block in visual.transformer.resblocks:
        x, A = clip_reference.attention_block(block, x)
        outputs.append(x)
        attentions.append(A)
    with torch.no_grad():
        text_hat = model.encode_text(tokens, normalize=True)  # [T, E], unit
        # the reference's image tower is the model's
        own = model.encode_image(images, normalize=True)
        pooled = visual.ln_post(outputs[-1])
        pooled = pooled[:, 0] if visual.pool_type == "tok" else pooled[:, 1:].mean(dim=1)
        assert relative_error(F.normalize(pooled @ visual.proj, dim=-1), own) < 1e-13

    def score(x, t):
        # the authors' read-out: the mean over ALL tokens (class token included) whatever the tower pools
        e = visual.ln_post(x.mean(dim=1)) @ visual.proj
        return F.normalize(e, dim=-1) @ text_hat[t]  # no logit scale

    grid = tuple(visual.grid_size)
    return torch.stack([legrad_map(lambda x, t=t: score(x, t), outputs, attentions, start, 1, grid)
                        for t in range(len(tokens))], dim=1)


# -- the tests ---------------------------------------------------------------------

VIT_CASES = {
    "class-token": lambda: tiny_vit(),
    "4-prefix-tokens": lambda: tiny_vit(reg_tokens=3),
    "mean-pooled": lambda: tiny_vit(global_pool="avg"),
    "non-square-3x5": lambda: tiny_vit(img_size=(24, 40)),
}


@pytest.mark.parametrize("start", [None, -1, 0], ids=["default-start", "start-minus-1", "start-0"])
@pytest.mark.parametrize("case", VIT_CASES)
def test_classifier_maps_match_the_reference(case, start):
    model = VIT_CASES[case]().double()
    images = images_for(model, 3, seed=123)
    targets = [1, 4, 2]
    options = {} if start is None else {"start_layer": start}
    result = heatmap.explain(model, images, "legrad", target=targets, **options)
    expected = vit_reference(model, images, torch.tensor(targets), -2 if start is None else start)
    assert result.maps.shape == (3, *model.patch_embed.grid_size)
    assert result.maps.dtype == torch.float64
    assert relative_error(result.maps, expected) < FLOAT64_TOLERANCE


def test_default_start_is_the_last_two_blocks():
    # -2 on a 3-block model is block 1: differs from both all blocks and the last block only
    model = tiny_vit().double()
    images = images_for(model, 2, seed=7)
    default = heatmap.explain(model, images, "legrad", target=[0, 3]).maps
    assert torch.equal(default, heatmap.explain(model, images, "legrad", target=[0, 3], start_layer=1).maps)
    for other in (0, -1):
        assert relative_error(heatmap.explain(model, images, "legrad", target=[0, 3], start_layer=other).maps,
                              default) > 1e-3


@pytest.mark.parametrize("start", [None, 0], ids=["default-start", "start-0"])
@pytest.mark.parametrize("pool_type", ["tok", "avg"])
def test_clip_maps_match_the_reference(pool_type, start):
    model = tiny_clip(pool_type=pool_type).double()
    images = random_images(2, seed=5, dtype=torch.float64)
    options = {} if start is None else {"start_layer": start}
    result = heatmap.explain(model, images, "legrad", texts=TEXTS, **options)
    expected = clip_reference_maps(model, images, tokens_of(TEXTS), -2 if start is None else start)
    assert result.maps.shape == (2, 3, 4, 4)
    assert relative_error(result.maps, expected) < FLOAT64_TOLERANCE
    # LeGrad explains the image tower only
    assert result.text_relevance is None


def test_batch_equals_one_by_one_and_runs_repeat():
    model = tiny_vit(img_size=(24, 40)).double()
    images = images_for(model, 3, seed=11)
    targets = [0, 2, 4]
    batch = heatmap.explain(model, images, "legrad", target=targets)
    singles = torch.cat([heatmap.explain(model, images[i:i + 1], "legrad", target=[targets[i]]).maps
                         for i in range(3)])
    assert relative_error(batch.maps, singles) < FLOAT64_TOLERANCE
    again = heatmap.explain(model, images, "legrad", target=targets)
    assert batch.maps.numpy().tobytes() == again.maps.numpy().tobytes()


def test_clip_batch_equals_one_by_one():
    model = tiny_clip().double()
    images = random_images(2, seed=5, dtype=torch.float64)
    both = heatmap.explain(model, images, "legrad", texts=TEXTS).maps
    for b in range(2):
        alone = heatmap.explain(model, images[b:b + 1], "legrad", texts=TEXTS).maps
        assert relative_error(alone[0], both[b]) < FLOAT64_TOLERANCE


def test_the_map_depends_on_the_target():
    model = tiny_vit().double()
    images = images_for(model, 1, seed=3)
    first = heatmap.explain(model, images, "legrad", target=0).maps
    other = heatmap.explain(model, images, "legrad", target=3).maps
    assert relative_error(first, other) > 1e-2
    # and for CLIP on the text: each text gives its own map
    clip_maps = heatmap.explain(tiny_clip().double(), random_images(1, seed=5, dtype=torch.float64), "legrad",
                                texts=TEXTS).maps
    assert relative_error(clip_maps[0, 0], clip_maps[0, 1]) > 1e-2


@pytest.mark.parametrize("start", [7, -4, 3])
def test_a_start_layer_outside_the_model_is_refused(start):
    model = tiny_vit()  # 3 blocks: valid start layers are -3..2
    with pytest.raises(UsageError):
        heatmap.explain(model, random_images(1, seed=1), "legrad", target=0, start_layer=start)
