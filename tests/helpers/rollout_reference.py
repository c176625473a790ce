"""rollout, grad-rollout and chefer-generic on a timm ViT and on each (image, text) pair of an open_clip CLIP.

An independent float64 reading of docs/METHODS.md: the per-image loops of
``helpers.reference`` on the explicit forwards of ``helpers.reference`` and
``helpers.clip_reference``. Nothing here imports vit-heatmap.
"""

from __future__ import annotations

import torch

from helpers import clip_reference, reference


def reference_maps(model, images, targets, method, options, query, protect):
    logits, attentions, grads = reference.gradients(model, images, targets)
    num_blocks = len(attentions)
    start = options.get("start_layer", 0) % num_blocks
    prefix = model.num_prefix_tokens
    gh, gw = model.patch_embed.dynamic_feat_size(images.shape[-2:])
    maps = []
    for b in range(images.shape[0]):
        A = [a[b] for a in attentions]
        G = [g[b] for g in grads]
        if method == "rollout":
            R = reference.rollout_one(A, options.get("head_fusion", "mean"), options.get("discard_ratio", 0.0), start,
                                      protect)
        elif method == "grad-rollout":
            R = reference.grad_rollout_one(A, G, options.get("discard_ratio", 0.9), start)
        else:
            R = reference.chefer_generic_one(A, G, start)
        maps.append(reference.query_row(R, query)[prefix:].reshape(gh, gw))
    return logits, torch.stack(maps)


def reference_pair(model, images, tokens, method, options, b, t):
    image_attn, image_grads, text_attn, text_grads, logits = clip_reference.pair_gradients(model, images, tokens, b, t)
    image_start = options.get("start_layer", METHOD_CLIP_START[method]) % 3
    text_start = options.get("text_start_layer", options.get("start_layer", METHOD_CLIP_START[method])) % 3
    if method == "rollout":
        image_R = reference.rollout_one(image_attn, "mean", options.get("discard_ratio", 0.0), image_start, 0)
        text_R = reference.rollout_one(text_attn, "mean", options.get("discard_ratio", 0.0), text_start, None)
    elif method == "grad-rollout":
        image_R = reference.grad_rollout_one(image_attn, image_grads, options.get("discard_ratio", 0.9), image_start)
        text_R = reference.grad_rollout_one(text_attn, text_grads, options.get("discard_ratio", 0.9), text_start)
    else:
        image_R = reference.chefer_generic_one(image_attn, image_grads, image_start)
        text_R = reference.chefer_generic_one(text_attn, text_grads, text_start)
    eot = int(tokens[t].argmax())
    return image_R[0, 1:].reshape(4, 4), text_R[eot, 1:eot], logits[b, t]


METHOD_CLIP_START = {"rollout": 0, "grad-rollout": 0, "chefer-generic": -1}
