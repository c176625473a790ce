"""transformer-attribution on a timm ViT (``ref_maps``) and each (image, text) pair of an open_clip CLIP (``ref_pair``).

An independent float64 reading of docs/METHODS.md: each image (each text) runs
alone through a manual forward pass, the LRP pass starts at the logit (for CLIP
at the embedding: ``R_e = e * (s / ||e||) * t_hat``; the text tower
symmetrically, with the image's unit embedding) and applies the rules of
``helpers.lrp_reference`` block by block. Nothing here imports vit-heatmap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from helpers import clip_reference, reference
from helpers.lrp_reference import (
    ref_add,
    ref_clone,
    ref_linear,
    ref_lrp,
    ref_product,
    ref_safe_divide,
    ref_select,
    ref_unnormalized_rollout,
)

# -- timm ViTs ---------------------------------------------------------------------------

def ref_maps(model, images, targets, query, start_layer=0):
    """Per image: Abar_l = mean_h((dA * RA)+), R = prod (Abar + I) unnormalised, query row over the patches."""
    _, _, grads = reference.gradients(model, images, targets)
    num_blocks = len(model.blocks)
    start = start_layer % num_blocks
    prefix = model.num_prefix_tokens
    gh, gw = model.patch_embed.grid_size
    maps = []
    for b in range(images.shape[0]):
        RA, _, _ = ref_lrp(model, images[b:b + 1], int(targets[b]))
        R = ref_unnormalized_rollout([(grads[layer][b] * RA[layer]).clamp(min=0).mean(dim=0)
                                      for layer in range(start, num_blocks)])
        maps.append(reference.query_row(R, query)[prefix:].reshape(gh, gw))
    return torch.stack(maps)


# -- CLIP: each (image, text) pair, both towers -----------------------------------------

def ref_blocks_forward(blocks, x, attn_mask=None):
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
            scores = scores + attn_mask
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


def ref_blocks_lrp(blocks, kept, R):
    """RA per block and the relevance at the first block's input, from the last block's output R."""
    RA = [None] * len(blocks)
    for index in reversed(range(len(blocks))):
        block, f = blocks[index], kept[index]
        R_mid, R_mlp = ref_add(f["mid"], f["mlp_out"], R)
        R_h2 = ref_linear(f["h2"], block.mlp.c_fc.weight, ref_linear(f["hidden"], block.mlp.c_proj.weight, R_mlp))
        R = ref_clone(f["mid"], R_mid, R_h2)
        R_x, R_attn = ref_add(f["x"], f["attn_out"], R)
        R_merged = ref_linear(f["merged"], block.attn.out_proj.weight, R_attn)
        H, L = block.attn.num_heads, R_merged.shape[1]
        R_o = R_merged.reshape(1, L, H, -1).transpose(1, 2)
        R_A, R_v = ref_product(f["A"], f["v"], R_o)
        RA[index] = R_A[0]
        R_q, R_kT = ref_product(f["q"], f["k"].transpose(-2, -1), R_A)
        R_qkv = torch.cat([t.transpose(1, 2).reshape(1, L, -1) for t in (R_q, R_kT.transpose(-2, -1), R_v)], dim=-1)
        R = ref_clone(f["x"], R_x, ref_linear(f["h"], block.attn.in_proj_weight, R_qkv))
    return RA, R


def ref_image(model, image):
    """Image tower of one image: kept operands, pooled vector, embedding, final tokens."""
    visual = model.visual
    with torch.no_grad():
        x = visual.conv1(image).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(1, 1, -1), x], dim=1) + visual.positional_embedding
        kept, x = ref_blocks_forward(visual.transformer.resblocks, visual.ln_pre(x))
        tokens = visual.ln_post(x)
        pooled = tokens[:, 0] if visual.pool_type == "tok" else tokens[:, 1:].mean(dim=1)
    return kept, tokens, pooled, pooled @ visual.proj


def ref_text(model, tokens):
    """Text tower of one text [1, L]: kept operands, end-of-text index, pooled vector, embedding."""
    with torch.no_grad():
        L = tokens.shape[1]
        causal = torch.full((L, L), float("-inf"), dtype=torch.float64).triu(1)
        x = model.token_embedding(tokens) + model.positional_embedding
        kept, x = ref_blocks_forward(model.transformer.resblocks, x, causal)
        eot = int(tokens[0].argmax())
        pooled = model.ln_final(x)[:, eot]
    return kept, eot, pooled, pooled @ model.text_projection


def ref_start(model, embedding, other):
    """R_e = e * (s / ||e||) * other_hat, s = the logit scale."""
    scale = model.logit_scale.exp().detach()
    return embedding * (scale / embedding.norm()) * other / other.norm()


def ref_image_lrp(model, image, text_embedding):
    kept, tokens, pooled, embedding = ref_image(model, image)
    R_pooled = ref_linear(pooled, model.visual.proj.t(), ref_start(model, embedding, text_embedding))
    R = torch.zeros_like(tokens)
    if model.visual.pool_type == "tok":  # ln_post before the pooling: identity, then IndexSelect
        R[0, 0] = ref_select(tokens[0, 0], R_pooled[0])
    else:  # the z-rule of a mean over the patch tokens (not in METHODS.md)
        total = tokens[0, 1:].sum(dim=0)
        for i in range(1, tokens.shape[1]):
            R[0, i] = tokens[0, i] * ref_safe_divide(R_pooled[0], total)
    return ref_blocks_lrp(model.visual.transformer.resblocks, kept, R)


def ref_text_lrp(model, tokens, image_embedding):
    kept, eot, pooled, embedding = ref_text(model, tokens)
    R_pooled = ref_linear(pooled, model.text_projection.t(), ref_start(model, embedding, image_embedding))
    R = torch.zeros(1, tokens.shape[1], pooled.shape[-1], dtype=torch.float64)
    R[0, eot] = ref_select(pooled[0], R_pooled[0])
    return ref_blocks_lrp(model.transformer.resblocks, kept, R), eot


def ref_rollout(grads, RA, start):
    return ref_unnormalized_rollout([(grads[layer] * RA[layer]).clamp(min=0).mean(dim=0)
                                     for layer in range(start, len(RA))])


def ref_pair(model, images, tokens, b, t, image_start=0, text_start=0):
    """The image map and the text's token relevance of the pair (b, t)."""
    _, image_grads, _, text_grads, _ = clip_reference.pair_gradients(model, images, tokens, b, t)
    image_embedding = ref_image(model, images[b:b + 1])[3]
    text_embedding = ref_text(model, tokens[t:t + 1])[3]
    (image_RA, _) = ref_image_lrp(model, images[b:b + 1], text_embedding)
    (text_RA, _), eot = ref_text_lrp(model, tokens[t:t + 1], image_embedding)
    image_R = ref_rollout(image_grads, image_RA, image_start % len(image_RA))
    text_R = ref_rollout(text_grads, text_RA, text_start % len(text_RA))
    if model.visual.pool_type == "tok":
        image_row = image_R[0]
    else:
        image_row = image_R[1:].mean(dim=0)
    return image_row[1:].reshape(4, 4), text_R[eot, 1:eot]
