"""full-lrp down to the pixels, on a timm ViT (``ref_timm``) and the open_clip image tower (``ref_clip``).

An independent float64 reading of docs/METHODS.md: the LRP pass under the
ORIGINAL rules from the start relevance through every block (``helpers.lrp_reference``
for timm, written out below for open_clip), then the position-embedding add
(the tokens' share), the patch tokens back on the grid, the bounded z^B rule
through the patch convolution (``conv2d`` / ``conv_transpose2d``), summed over
the colour channels. Nothing here imports vit-heatmap.
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
