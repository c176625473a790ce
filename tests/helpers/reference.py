"""Straightforward, independent implementations of docs/METHODS.md for the tests.

Nothing here imports vit-heatmap: a manual forward pass through a timm ViT
that forms each block's attention explicitly, and each method written as a
plain loop over images and layers, the way the formulas read.
"""

from __future__ import annotations

import math

import torch


def manual_forward(model, images):
    """Logits and each block's attention probabilities (with .grad retained)."""
    x = model.patch_embed(images)
    x = model._pos_embed(x)
    x = model.norm_pre(x)
    attentions = []
    for block in model.blocks:
        attn = block.attn
        h = block.norm1(x)
        B, N, C = h.shape
        qkv = attn.qkv(h).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        probs = torch.softmax((q * attn.scale) @ k.transpose(-2, -1), dim=-1)
        if probs.requires_grad:
            probs.retain_grad()
        attentions.append(probs)
        out = (probs @ v).transpose(1, 2).reshape(B, N, C)
        x = x + block.ls1(attn.proj(out))
        x = x + block.ls2(block.mlp(block.norm2(x)))
    x = model.norm(x)
    return model.forward_head(x), attentions


def gradients(model, images, targets):
    """Per image b: attention list and d logit[b, targets[b]] / d attention."""
    logits, attentions = manual_forward(model, images)
    logits[torch.arange(len(targets)), targets].sum().backward()
    return logits, [a.detach() for a in attentions], [a.grad.detach() for a in attentions]


def query_row(R, query):
    """query = ("token", index) or ("mean", first_pooled_token)."""
    kind, index = query
    if kind == "token":
        return R[index]
    return R[index:].mean(dim=0)


def rollout_one(attentions, fusion, ratio, start, protect):
    """attentions: per layer [H, N, N] of one image."""
    N = attentions[0].shape[-1]
    eye = torch.eye(N, dtype=attentions[0].dtype)
    R = eye
    for A in attentions[start:]:
        F = {"mean": A.mean(0), "max": A.max(0).values, "min": A.min(0).values}[fusion].clone()
        count = math.floor(ratio * N * N)
        if count:
            order = torch.argsort(F.flatten(), stable=True)[:count]
            for flat_index in order.tolist():
                i, j = divmod(flat_index, N)
                if protect is not None and i == protect and j == protect:
                    continue
                F[i, j] = 0.0
        M = F + eye
        for i in range(N):
            M[i] = M[i] / M[i].sum()
        R = M @ R
    return R


def grad_rollout_one(attentions, grads, ratio, start):
    N = attentions[0].shape[-1]
    eye = torch.eye(N, dtype=attentions[0].dtype)
    R = eye
    for A, G in zip(attentions[start:], grads[start:], strict=False):
        F = (A * G).mean(0)
        F[F < 0] = 0
        count = math.floor(ratio * N * N)
        if count:
            flat = F.flatten()
            flat[torch.argsort(flat, stable=True)[:count]] = 0
            F = flat.reshape(N, N)
        M = F + eye
        M = M / M.sum(dim=1, keepdim=True)
        R = M @ R
    return R


def chefer_generic_one(attentions, grads, start):
    N = attentions[0].shape[-1]
    R = torch.eye(N, dtype=attentions[0].dtype)
    for A, G in zip(attentions[start:], grads[start:], strict=False):
        Abar = (G * A).clamp(min=0).mean(0)
        R = R + Abar @ R
    return R
