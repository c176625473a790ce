"""Attention Grad-CAM (the CVPR 2021 paper's ``generate_cam_attn`` baseline).

docs/METHODS.md, "The CVPR 2021 paper's baselines": on the last block, per
head a weight ``w_h`` = the mean over the patch columns of the gradient's
query row; the map is ``(mean_h(w_h * A_{L-1}[h, q, P:]))+``, the head mean
first and the clamp after. Raw: no min-max, no fixed 14x14 grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from heatmap.explainers.registry import Evidence, Method, register

if TYPE_CHECKING:
    import torch


def relevance(evidence: Evidence, options: Mapping[str, Any]) -> torch.Tensor:
    return weighted_attention(evidence).clamp(min=0)


def query_rows(probs: torch.Tensor, grads: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Each head's query row of the gradient: ``[B, H, N, N]`` -> ``[B, H, N]``."""
    import torch

    return torch.einsum("bn,bhnm->bhm", query.to(grads), grads)


def weighted_attention(evidence: Evidence) -> torch.Tensor:
    """``mean_h(w_h * A_{L-1}[h, q, :])`` before the clamp, ``[B, N]``."""
    import torch

    assert evidence.attention_grads is not None
    probs, grads_row = evidence.attention_probs[-1], evidence.attention_grads[-1]  # [B, H, N, N], query_rows
    query, columns = evidence.query.to(probs), evidence.columns.to(probs)[:, None, :]
    probs_row = torch.einsum("bn,bhnm->bhm", query, probs)  # each head's query row [B, H, N]
    # w_h: the mean of the gradient's query row over the patch columns (a text: its tokens)
    weights = (grads_row * columns).sum(dim=-1, keepdim=True) / columns.sum(dim=-1, keepdim=True)
    return (weights * probs_row).mean(dim=1)


METHOD = register(Method(
    name="attention-gradcam",
    summary="Attention Grad-CAM: the last block's attention weighted per head by its mean gradient "
            "(the CVPR 2021 paper's baseline).",
    description="Per head, the mean gradient of the query row over the patches weights the head's attention; "
                "head mean, then clamp.",
    options=(),
    relevance=relevance,
    reduce_gradient=query_rows,
    default_start_layer=-1,
))
