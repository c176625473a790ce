"""partial-lrp under the ORIGINAL LRP rules: a timm ViT (``reference_map``), a CLIP pair (``clip_partial_lrp_pair``).

An independent float64 reading of docs/METHODS.md: ``mean_h((RA_{L-1})+)`` at
the query row, RA from ``helpers.lrp_reference`` run with the original rules
(timm) or from both open_clip towers written out below. Nothing here imports vit-heatmap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from helpers.lrp_reference import (
    ref_add_original,
    ref_clone,
    ref_linear_original,
    ref_lrp,
    ref_product,
    ref_safe_divide,
    ref_select,
)

# -- timm ViTs ---------------------------------------------------------------------------

def reference_map(model, image, target, query):
    RA, _, _ = ref_lrp(model, image, target, linear=ref_linear_original, add=ref_add_original)
    fused = RA[-1].clamp(min=0).mean(dim=0)
    kind, index = query
    row = fused[index] if kind == "token" else fused[index:].mean(dim=0)
    return row[model.num_prefix_tokens:].reshape(tuple(model.patch_embed.grid_size))


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
