"""The aggregations as full ``[B, N, N]`` products, then their query row: the reference the row-only
aggregation of ``heatmap.explainers.aggregation`` is checked against (it evaluates the same row as
vector-matrix products)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def identity_like(matrix: torch.Tensor) -> torch.Tensor:
    batch, tokens, _ = matrix.shape
    return torch.eye(tokens, dtype=matrix.dtype, device=matrix.device).expand(batch, tokens, tokens)


def normalized_rollout(fused: Sequence[torch.Tensor]) -> torch.Tensor:
    """``R = M_last @ ... @ M_first`` with ``M_l = rownorm(F_l + I)``."""
    relevance = identity_like(fused[0])
    for matrix in fused:
        with_skip = matrix + identity_like(matrix)
        relevance = (with_skip / with_skip.sum(dim=-1, keepdim=True)) @ relevance
    return relevance


def unnormalized_rollout(fused: Sequence[torch.Tensor]) -> torch.Tensor:
    """``R = (I + Abar_last) @ ... @ (I + Abar_first)``, starting from the first block's ``I + Abar``."""
    eye = identity_like(fused[0])
    relevance = fused[0] + eye
    for matrix in fused[1:]:
        relevance = (matrix + eye) @ relevance
    return relevance


def accumulated_relevance(fused: Sequence[torch.Tensor]) -> torch.Tensor:
    """``R = I``, then ``R = R + Abar_l @ R`` per block."""
    relevance = identity_like(fused[0])
    for matrix in fused:
        relevance = relevance + matrix @ relevance
    return relevance


def query_row(relevance: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bn,bnm->bm", query.to(relevance), relevance)
