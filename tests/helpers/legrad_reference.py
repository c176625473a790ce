"""legrad on a timm ViT (``vit_reference``) and the image tower of an open_clip CLIP (``clip_reference_maps``).

An independent float64 reading of docs/METHODS.md ("legrad"): every block's
attention is formed by hand so that each ``A_l`` is a tensor in the graph, and
each block's score ``y_l`` is differentiated on its own with
``torch.autograd.grad``. Nothing here imports vit-heatmap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from helpers import clip_reference


def relative_error(actual, expected):
    assert actual.shape == expected.shape
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-300))


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
