"""A straightforward CLIP forward with explicit attention, for the tests.

Nothing here imports vit-heatmap. Each block's attention is computed from the
``nn.MultiheadAttention`` weights by hand, so its probabilities are tensors
with gradients; everything else calls the model's own submodules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_block(block, x, attn_mask=None):
    attn = block.attn
    B, L, D = x.shape
    H = attn.num_heads
    h = block.ln_1(x)
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(B, L, H, D // H).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / (D // H) ** 0.5
    if attn_mask is not None:
        scores = scores + attn_mask
    probs = scores.softmax(dim=-1)
    if probs.requires_grad:
        probs.retain_grad()
    out = attn.out_proj((probs @ v).transpose(1, 2).reshape(B, L, D))
    x = x + block.ls_1(out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, probs


def encode_image(model, images):
    visual = model.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    attentions = []
    for block in visual.transformer.resblocks:
        x, probs = attention_block(block, x)
        attentions.append(probs)
    x = visual.ln_post(x)  # before pooling, open_clip's default
    pooled = x[:, 0] if visual.pool_type == "tok" else x[:, 1:].mean(dim=1)
    return pooled @ visual.proj, attentions


def encode_text(model, tokens):
    x = model.token_embedding(tokens) + model.positional_embedding
    L = tokens.shape[1]
    causal = torch.full((L, L), float("-inf"), dtype=x.dtype).triu(1)
    attentions = []
    for block in model.transformer.resblocks:
        x, probs = attention_block(block, x, causal)
        attentions.append(probs)
    x = model.ln_final(x)
    eot = tokens.argmax(dim=-1)
    return x[torch.arange(len(tokens)), eot] @ model.text_projection, attentions


def logits_and_attention(model, images, tokens):
    image, image_attn = encode_image(model, images)
    text, text_attn = encode_text(model, tokens)
    logits = model.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    return logits, image_attn, text_attn


def pair_gradients(model, images, tokens, b, t):
    """Attention (of image b and of text t) and its gradient of logits[b, t] alone."""
    model.zero_grad()
    logits, image_attn, text_attn = logits_and_attention(model, images, tokens)
    logits[b, t].backward()
    return ([a[b].detach() for a in image_attn], [a.grad[b].detach() for a in image_attn],
            [a[t].detach() for a in text_attn], [a.grad[t].detach() for a in text_attn], logits.detach())
