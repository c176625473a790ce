"""partial-lrp and the ORIGINAL LRP rules (the authors' layers_lrp.py), in float64.

The rules on 2-unit examples worked out by hand, then the method on tiny
random ViTs against ``helpers.lrp_reference`` run with the original rules:
``mean_h((RA_{L-1})+)[q, P:]``; and on tiny CLIPs (image maps and text-token
relevance) against a reference of both towers written out below.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import heatmap
from heatmap.explainers.lrp import linear_relevance_original, residual_relevance_original
from helpers.lrp_reference import (
    ref_add,
    ref_add_original,
    ref_clone,
    ref_linear,
    ref_linear_original,
    ref_lrp,
    ref_product,
    ref_safe_divide,
    ref_select,
    relative_error,
)
from helpers.models import TEXTS, random_images, tiny_clip, tiny_vit, tokens_of

EPS = 1e-9
# Largest relative error against the float64 references measured here: 1.5e-15
# (a CLIP image map; text-token relevance 1.1e-15, the ViTs 3.1e-16, the
# non-square ViT 1.7e-16); 1e-12 keeps a margin of over 600x.
FLOAT64_TOLERANCE = 1e-12


def f64(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_original_linear_normalises_each_sign_part_on_its_own():
    # x = [2, -1], W = [[1, 3], [-2, 1]], R = [1, 0.5]
    #   x+ = [2, 0], x- = [0, -1];  W+ = [[1, 3], [0, 1]], W- = [[0, 0], [-2, 0]]
    #   Z+ = x+ W+^T = [2, 0];  Z- = x- W-^T = [0, 0]
    #   S+ = [1 / (2 + 1e-9), 0] (0 where Z+ == 0);  S- = [0, 0]
    #   R_x = x+ * (S+ W+) + x- * (S- W-) = [2 * 1 / (2 + 1e-9), 0]
    x, weight, R = f64(2.0, -1.0), f64([1.0, 3.0], [-2.0, 1.0]), f64(1.0, 0.5)
    assert torch.equal(linear_relevance_original(x, weight, R), f64(2.0 * (1.0 / (2.0 + EPS)), 0.0))
    # each part keeps all of R, so the total is not conserved:
    # x = [1, -1], W = [[1, -1]], R = [1]: Z+ = 1 * 1 = 1, Z- = (-1) * (-1) = 1
    #   R_x = [1 * 1 / (1 + 1e-9), (-1) * (1 / (1 + 1e-9)) * (-1)]: the relevance doubled
    doubled = linear_relevance_original(f64(1.0, -1.0), f64([1.0, -1.0]), f64(1.0))
    assert torch.equal(doubled, f64(1.0 / (1.0 + EPS), 1.0 / (1.0 + EPS)))
    assert abs(float(doubled.sum()) - 2.0) < 1e-8


def test_original_residual_add_is_not_rescaled():
    a, b, R = f64(1.0, 3.0), f64(1.0, -1.0), f64(2.0, 4.0)
    rel_a, rel_b = residual_relevance_original(a, b, R)
    # z = a + b = [2, 2]; each operand's share R * operand / (z + 1e-9)
    assert torch.equal(rel_a, f64(1.0 * (2.0 / (2.0 + EPS)), 3.0 * (4.0 / (2.0 + EPS))))
    assert torch.equal(rel_b, f64(1.0 * (2.0 / (2.0 + EPS)), -1.0 * (4.0 / (2.0 + EPS))))


def test_the_references_agree_with_the_hand_worked_rules():
    x, weight, R = f64([1.0, -1.0]), f64([1.0, -1.0]), f64([1.0])
    assert torch.allclose(ref_linear_original(x, weight, R), linear_relevance_original(x, weight, R), rtol=1e-15)
    a, b = f64(1.0, 3.0), f64(1.0, -1.0)
    for ours, theirs in zip(residual_relevance_original(a, b, f64(2.0, 4.0)),
                            ref_add_original(a, b, f64(2.0, 4.0)), strict=True):
        assert torch.equal(ours, theirs)


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


def reference_map(model, image, target, query):
    RA, _, _ = ref_lrp(model, image, target, linear=ref_linear_original, add=ref_add_original)
    fused = RA[-1].clamp(min=0).mean(dim=0)
    kind, index = query
    row = fused[index] if kind == "token" else fused[index:].mean(dim=0)
    return row[model.num_prefix_tokens:].reshape(tuple(model.patch_embed.grid_size))


@pytest.mark.parametrize("model_name", MODELS)
def test_partial_lrp_matches_the_reference(model_name):
    factory, query = MODELS[model_name]
    model = factory().double()
    images = images_for(model, 3, seed=123)
    targets = [1, 4, 2]
    result = heatmap.explain(model, images, "partial-lrp", target=targets)
    assert result.maps.shape == (3, *model.patch_embed.grid_size)
    for b in range(3):
        expected = reference_map(model, images[b:b + 1], targets[b], query)
        assert relative_error(result.maps[b], expected) < FLOAT64_TOLERANCE
    singles = torch.cat([heatmap.explain(model, images[i:i + 1], "partial-lrp", target=[targets[i]]).maps
                         for i in range(3)])
    assert relative_error(result.maps, singles) < FLOAT64_TOLERANCE


def test_partial_lrp_explains_clip_images_and_texts():
    model, images = tiny_clip().double(), random_images(2, seed=5, dtype=torch.float64)
    result = heatmap.explain(model, images, "partial-lrp", texts=TEXTS)
    assert result.maps.shape == (2, 3, 4, 4) and torch.isfinite(result.maps).all()
    assert all(torch.isfinite(relevance).all() for row in result.text_relevance for relevance in row)
    assert result.maps.abs().amax() > 0


# -- CLIP: an independent float64 reference of both towers -------------------------
#
# Per (image, text) pair, each tower alone through a manual forward pass that
# keeps every block's operands; the LRP pass starts at the embedding
# (docs/METHODS.md: R_e = e * (s / ||e||) * t_hat for the image tower, and
# symmetrically R_t = t * (s / ||t||) * e_hat for the text tower), goes through
# the projection (a Linear), the final norm (identity), the pooling (the class
# token or the end-of-text token by IndexSelect; a mean by its z-rule) and the
# blocks under the ORIGINAL rules. partial-lrp = mean_h((RA_{L-1})+) at the
# query row: the class token (the mean of the patch rows for a mean-pooled
# tower) at the patch columns; the end-of-text token at the tokens 1..eot-1.

def with_biases(model):
    """Random biases everywhere, so that a rule that wrongly includes them shows."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            for name in ("bias", "in_proj_bias"):
                bias = getattr(module, name, None)
                if isinstance(bias, torch.nn.Parameter):
                    bias.copy_(torch.randn(bias.shape, generator=generator) * 0.3)
    return model.double()


def clip_blocks_forward(blocks, x, attn_mask=None):
    """One item [1, L, D] through open_clip blocks by hand, keeping each block's operands."""
    kept = []
    for block in blocks:
        attn = block.attn
        _, L, D = x.shape
        H = attn.num_heads
        h = block.ln_1(x)
        q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(1, L, H, D // H).transpose(1, 2) for t in (q, k, v))
        scores = (q * (D // H) ** -0.5) @ k.transpose(-2, -1)  # q kept unscaled: the LRP product is Q K^T
        if attn_mask is not None:
            scores = scores + attn_mask  # a constant: identity for relevance
        A = scores.softmax(dim=-1)
        merged = (A @ v).transpose(1, 2).reshape(1, L, D)
        attn_out = block.ls_1(attn.out_proj(merged))
        mid = x + attn_out
        h2 = block.ln_2(mid)
        hidden = block.mlp.gelu(block.mlp.c_fc(h2))
        mlp_out = block.ls_2(block.mlp.c_proj(hidden))
        kept.append(dict(x=x, h=h, q=q, k=k, v=v, A=A, merged=merged, attn_out=attn_out, mid=mid, h2=h2,
                         hidden=hidden, mlp_out=mlp_out))
        x = mid + mlp_out
    return kept, x


def clip_blocks_lrp(blocks, kept, R, linear, add):
    """RA per block [H, L, L], from the last block's output relevance R, under the given Linear and add rules."""
    RA = [None] * len(blocks)
    for index in reversed(range(len(blocks))):
        block, f = blocks[index], kept[index]
        R_mid, R_mlp = add(f["mid"], f["mlp_out"], R)  # ls_2: identity
        R_h2 = linear(f["h2"], block.mlp.c_fc.weight, linear(f["hidden"], block.mlp.c_proj.weight, R_mlp))
        R = ref_clone(f["mid"], R_mid, R_h2)  # ln_2, GELU: identity
        R_x, R_attn = add(f["x"], f["attn_out"], R)
        R_merged = linear(f["merged"], block.attn.out_proj.weight, R_attn)
        H, L = block.attn.num_heads, R_merged.shape[1]
        R_A, R_v = ref_product(f["A"], f["v"], R_merged.reshape(1, L, H, -1).transpose(1, 2))
        RA[index] = R_A[0]
        R_q, R_kT = ref_product(f["q"], f["k"].transpose(-2, -1), R_A)  # softmax, mask: identity
        R_qkv = torch.cat([t.transpose(1, 2).reshape(1, L, -1) for t in (R_q, R_kT.transpose(-2, -1), R_v)], dim=-1)
        R = ref_clone(f["x"], R_x, linear(f["h"], block.attn.in_proj_weight, R_qkv))  # ln_1: identity
    return RA


def clip_image_forward(model, image):
    visual = model.visual
    with torch.no_grad():
        x = visual.conv1(image).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(1, 1, -1), x], dim=1) + visual.positional_embedding
        kept, x = clip_blocks_forward(visual.transformer.resblocks, visual.ln_pre(x))
        tokens = visual.ln_post(x)  # before the pooling, open_clip's default
        pooled = tokens[:, 0] if visual.pool_type == "tok" else tokens[:, 1:].mean(dim=1)
    return kept, tokens, pooled, pooled @ visual.proj


def clip_text_forward(model, tokens):
    with torch.no_grad():
        L = tokens.shape[1]
        causal = torch.full((L, L), float("-inf"), dtype=torch.float64).triu(1)
        x = model.token_embedding(tokens) + model.positional_embedding
        kept, x = clip_blocks_forward(model.transformer.resblocks, x, causal)
        eot = int(tokens[0].argmax())  # CLIP pools the end-of-text token, the largest id
        pooled = model.ln_final(x)[:, eot]
    return kept, eot, pooled, pooled @ model.text_projection


def clip_start(model, embedding, other):
    """R_e = e * (s / ||e||) * other_hat, s the logit scale: each dimension's share of the score."""
    scale = model.logit_scale.exp().detach()
    return embedding * (scale / embedding.norm()) * other / other.norm()


def clip_partial_lrp_pair(model, image, tokens, linear=ref_linear_original, add=ref_add_original):
    """partial-lrp of one (image [1, 3, H, W], text [1, L]) pair: the image map [gh, gw] and the token relevance."""
    visual = model.visual
    image_kept, image_tokens, image_pooled, image_embedding = clip_image_forward(model, image)
    text_kept, eot, text_pooled, text_embedding = clip_text_forward(model, tokens)

    R_pooled = linear(image_pooled, visual.proj.t(), clip_start(model, image_embedding, text_embedding))
    R = torch.zeros_like(image_tokens)
    if visual.pool_type == "tok":  # ln_post: identity; then IndexSelect
        R[0, 0] = ref_select(image_tokens[0, 0], R_pooled[0])
    else:  # the z-rule of a mean over the patch tokens (not in METHODS.md; as explainers/lrp.py)
        total = image_tokens[0, 1:].sum(dim=0)
        for i in range(1, image_tokens.shape[1]):
            R[0, i] = image_tokens[0, i] * ref_safe_divide(R_pooled[0], total)
    image_RA = clip_blocks_lrp(visual.transformer.resblocks, image_kept, R, linear, add)
    fused = image_RA[-1].clamp(min=0).mean(dim=0)  # clamp first, head mean after
    row = fused[0] if visual.pool_type == "tok" else fused[1:].mean(dim=0)
    image_map = row[1:].reshape(tuple(visual.grid_size))

    R_pooled = linear(text_pooled, model.text_projection.t(), clip_start(model, text_embedding, image_embedding))
    R = torch.zeros(1, tokens.shape[1], text_pooled.shape[-1], dtype=torch.float64)
    R[0, eot] = ref_select(text_pooled[0], R_pooled[0])  # ln_final: identity
    text_RA = clip_blocks_lrp(model.transformer.resblocks, text_kept, R, linear, add)
    token_relevance = text_RA[-1].clamp(min=0).mean(dim=0)[eot, 1:eot]
    return image_map, token_relevance


CLIP_CASES = {
    "class-token": lambda: with_biases(tiny_clip()),
    "mean-pooled-quick-gelu": lambda: with_biases(tiny_clip(seed=1, pool_type="avg", quick_gelu=True)),
}


@pytest.mark.parametrize("case", CLIP_CASES)
def test_partial_lrp_on_clip_matches_the_reference(case):
    """Image maps and text-token relevance of every (image, text) pair equal the float64 reference."""
    model = CLIP_CASES[case]()
    images, tokens = random_images(2, seed=5, dtype=torch.float64), tokens_of(TEXTS)
    # the reference's towers are the model's
    with torch.no_grad():
        image_embeddings = torch.cat([clip_image_forward(model, images[b:b + 1])[3] for b in range(2)])
        text_embeddings = torch.cat([clip_text_forward(model, tokens[t:t + 1])[3] for t in range(3)])
        assert relative_error(image_embeddings, model.encode_image(images)) < 1e-13
        assert relative_error(text_embeddings, model.encode_text(tokens)) < 1e-13
    result = heatmap.explain(model, images, "partial-lrp", texts=TEXTS)
    assert result.maps.shape == (2, 3, 4, 4)
    for b in range(2):
        for t in range(3):
            image_map, token_relevance = clip_partial_lrp_pair(model, images[b:b + 1], tokens[t:t + 1])
            assert relative_error(result.maps[b, t], image_map) < FLOAT64_TOLERANCE
            assert relative_error(result.text_relevance[b][t], token_relevance) < FLOAT64_TOLERANCE


def test_the_clip_reference_tells_the_rule_sets_apart():
    # transformer-attribution's rules (shared Z, rescaled adds) give other
    # numbers on this model, so the reference above pins the ORIGINAL rules
    model = CLIP_CASES["class-token"]()
    images, tokens = random_images(2, seed=5, dtype=torch.float64), tokens_of(TEXTS)
    result = heatmap.explain(model, images, "partial-lrp", texts=TEXTS)
    image_map, token_relevance = clip_partial_lrp_pair(model, images[:1], tokens[1:2], ref_linear, ref_add)
    assert relative_error(result.maps[0, 1], image_map) > 1e-3
    assert relative_error(result.text_relevance[0][1], token_relevance) > 1e-3
