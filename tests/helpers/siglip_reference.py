"""SigLIP through transformers run by hand: explicit attention in every layer and in the pooling head, the head
laid out as docs/METHODS.md ("Modern ViT parts") does. Nothing here imports vit-heatmap.

The probe is token 0 of ``N + 1``; every block's ``[N, N]`` gets a zero row and
column 0; the head's ``[1, N]`` is the probe's row of one more layer whose
other rows are 0. legrad reads each block's output through the whole read-out
(post_layernorm, the head and its MLP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_forward(layer, x):
    """One SigLIP encoder layer with its attention explicit (this release's module names)."""
    attn = layer.self_attn
    B, N, D = x.shape
    H = attn.num_heads
    h = layer.layer_norm1(x)
    q, k, v = (proj(h).reshape(B, N, H, D // H).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    A = torch.softmax((q * (D // H) ** -0.5) @ k.transpose(-2, -1), dim=-1)
    A.retain_grad()
    x = x + attn.out_proj((A @ v).transpose(1, 2).reshape(B, N, D))
    return x + layer.mlp(layer.layer_norm2(x)), A


def image_forward(model, images):
    """The image embedding (not normalised), each block's probabilities and output tokens, the head's [B, H, 1, N]."""
    vision = model.vision_model
    x = vision.embeddings(images)
    attentions, outputs = [], []
    for layer in vision.encoder.layers:
        x, A = layer_forward(layer, x)
        attentions.append(A)
        outputs.append(x)
    pooled, P = head_forward(vision, x)
    return pooled, attentions, P, outputs


def head_forward(vision, x):
    """post_layernorm, then the attention-pooling head with its attention explicit: ([B, D], [B, H, 1, N])."""
    x = vision.post_layernorm(x)
    head = vision.head
    mha = head.attention
    B, N, D = x.shape
    H = mha.num_heads
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    probe = head.probe.expand(B, 1, D)
    q = F.linear(probe, w_q, b_q).reshape(B, 1, H, D // H).transpose(1, 2)
    k = F.linear(x, w_k, b_k).reshape(B, N, H, D // H).transpose(1, 2)
    v = F.linear(x, w_v, b_v).reshape(B, N, H, D // H).transpose(1, 2)
    P = torch.softmax((q * (D // H) ** -0.5) @ k.transpose(-2, -1), dim=-1)  # [B, H, 1, N]
    P.retain_grad()
    pooled = mha.out_proj((P @ v).transpose(1, 2).reshape(B, 1, D))
    pooled = pooled + head.mlp(head.layernorm(pooled))
    return pooled[:, 0], P


def text_forward(model, tokens):
    text = model.text_model
    x = text.embeddings(input_ids=tokens)
    attentions = []
    for layer in text.encoder.layers:  # no causal mask: SigLIP's text attention is bidirectional
        x, A = layer_forward(layer, x)
        attentions.append(A)
    return text.head(text.final_layer_norm(x)[:, -1]), attentions


def padded_block(matrix):
    """[H, N, N] -> [H, N+1, N+1]: the probe first, its row and column 0."""
    H, N, _ = matrix.shape
    out = torch.zeros(H, N + 1, N + 1, dtype=matrix.dtype)
    out[:, 1:, 1:] = matrix
    return out


def padded_pool(row):
    """[H, 1, N] -> [H, N+1, N+1]: the probe's row is the head's attention; every other row 0."""
    H, _, N = row.shape
    out = torch.zeros(H, N + 1, N + 1, dtype=row.dtype)
    out[:, 0, 1:] = row[:, 0]
    return out


def pair_reference(model, images, tokens, b, t):
    """The attention matrices and gradients of logits[b, t], image side laid out with the probe."""
    model.zero_grad()
    image_embedding, image_attn, pool, _ = image_forward(model, images)
    text_embedding, text_attn = text_forward(model, tokens)
    logits = (model.logit_scale.exp() * F.normalize(image_embedding, dim=-1) @ F.normalize(text_embedding, dim=-1).T
              + model.logit_bias)
    logits[b, t].backward()
    image_A = [padded_block(A[b].detach()) for A in image_attn] + [padded_pool(pool[b].detach())]
    image_G = [padded_block(A.grad[b]) for A in image_attn] + [padded_pool(pool.grad[b])]
    text_A = [A[t].detach() for A in text_attn]
    text_G = [A.grad[t] for A in text_attn]
    return image_A, image_G, text_A, text_G, logits.detach()


def legrad_reference(model, image, tokens, t, start):
    """legrad's image row of ``image`` (one) for text t: blocks l = start..L-1, each read through the whole read-out
    (post_layernorm, the head, its MLP), the unit embedding's cosine with the unit text embedding."""
    _, attentions, _, outputs = image_forward(model, image)
    text_embedding, _ = text_forward(model, tokens)
    unit_text = F.normalize(text_embedding[t], dim=-1).detach()
    total = 0
    for layer in range(start, len(attentions)):
        pooled, _ = head_forward(model.vision_model, outputs[layer])
        y = (F.normalize(pooled, dim=-1)[0] * unit_text).sum()
        G, = torch.autograd.grad(y, attentions[layer], retain_graph=True)
        padded = padded_block(G[0].clamp(min=0))  # [H, N+1, N+1]; the probe's row and column 0
        total = total + padded.mean(dim=0).mean(dim=0)
    return total[1:]
