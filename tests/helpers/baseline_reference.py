"""The CVPR 2021 paper's attention baselines (raw-attention, attention-gradcam) on timm ViTs and CLIP pairs.

An independent float64 reading of docs/METHODS.md on the explicit forwards of
``helpers.reference`` and ``helpers.clip_reference``. Nothing here imports vit-heatmap.
"""

from __future__ import annotations

from helpers import clip_reference


def query_row(matrix, query):
    """The query row of one image's ``[N, N]`` (or ``[H, N, N]``) matrix."""
    kind, index = query
    return matrix[..., index, :] if kind == "token" else matrix[..., index:, :].mean(dim=-2)


def raw_attention(A, query, prefix):
    return query_row(A.mean(dim=0), query)[prefix:]


def attention_gradcam(A, dA, query, prefix):
    weights = query_row(dA, query)[:, prefix:].mean(dim=-1)  # [H]
    return (weights[:, None] * query_row(A, query)[:, prefix:]).mean(dim=0).clamp(min=0)


REFERENCES = {"raw-attention": lambda A, dA, q, p: raw_attention(A, q, p),
              "attention-gradcam": attention_gradcam}


def clip_pair_reference(method, model, images, tokens, b, t):
    """The image map and the token relevance of the pair (b, t) of an open_clip CLIP."""
    image_A, image_dA, text_A, text_dA, _ = clip_reference.pair_gradients(model, images, tokens, b, t)
    image_map = REFERENCES[method](image_A[-1], image_dA[-1], ("token", 0), 1).reshape(tuple(model.visual.grid_size))
    eot = int(tokens[t].argmax())
    # a text's query row is its end-of-text token; its read-out columns its tokens 1..eot-1
    if method == "raw-attention":
        return image_map, text_A[-1].mean(dim=0)[eot, 1:eot]
    weights = text_dA[-1][:, eot, 1:eot].mean(dim=-1)
    return image_map, (weights[:, None] * text_A[-1][:, eot, 1:eot]).mean(dim=0).clamp(min=0)
