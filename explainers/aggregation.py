"""Pure functions shared by the methods: the math of docs/METHODS.md, no model.

Every tensor has a leading batch dimension and every operation is per image.
"""

from __future__ import annotations

from typing import Sequence

import torch

from heatmap.errors import UsageError


def identity_like(matrix: torch.Tensor) -> torch.Tensor:
    """The identity ``[B, N, N]`` with the dtype and device of ``matrix``."""
    batch, tokens, _ = matrix.shape
    eye = torch.eye(tokens, dtype=matrix.dtype, device=matrix.device)
    return eye.expand(batch, tokens, tokens)


def normalized_rollout(fused: Sequence[torch.Tensor]) -> torch.Tensor:
    """``R = M_last @ ... @ M_first`` with ``M_l = rownorm(F_l + I)``.

    Args:
        fused: per block from the start layer on, a head-fused map ``[B, N, N]``.

    Returns:
        the relevance matrix ``R`` ``[B, N, N]``.
    """
    relevance = identity_like(fused[0])
    for matrix in fused:
        with_skip = matrix + identity_like(matrix)
        # keepdim: each ROW sums to one (dividing without it scales columns).
        transition = with_skip / with_skip.sum(dim=-1, keepdim=True)
        relevance = transition @ relevance
    return relevance


def unnormalized_rollout(fused: Sequence[torch.Tensor]) -> torch.Tensor:
    """``R = (I + Abar_last) @ ... @ (I + Abar_first)``, rows NOT normalised.

    Transformer attribution's aggregation (the paper's Eq. 13; METHODS.md).
    Starting from the first block's ``I + Abar`` (not from ``I @ ...``)
    follows the authors' order of operations.

    Args:
        fused: per block from the start layer on, ``Abar_l`` ``[B, N, N]``.

    Returns:
        ``R`` ``[B, N, N]``.
    """
    eye = identity_like(fused[0])
    relevance = fused[0] + eye
    for matrix in fused[1:]:
        relevance = (matrix + eye) @ relevance
    return relevance


def accumulated_relevance(fused: Sequence[torch.Tensor]) -> torch.Tensor:
    """Chefer et al.'s self-attention rule: ``R = I``, then ``R = R + Abar_l @ R``.

    Args:
        fused: per block from the start layer on, ``Abar_l`` ``[B, N, N]``.

    Returns:
        ``R`` ``[B, N, N]``, unnormalised.
    """
    relevance = identity_like(fused[0])
    for matrix in fused:
        relevance = relevance + matrix @ relevance
    return relevance


def query_map(relevance: torch.Tensor, query_weights: torch.Tensor, num_prefix_tokens: int,
              grid: tuple[int, int]) -> torch.Tensor:
    """The map: the query row of ``R`` over the patch tokens, as a grid.

    Args:
        relevance: ``R`` ``[B, N, N]``.
        query_weights: ``[N]``; one-hot at the class token, or uniform over
            the tokens a mean-pooling model averages (the mean of their rows).
        num_prefix_tokens: P, the tokens before the patches.
        grid: ``(gh, gw)`` with ``gh * gw == N - P``.

    Returns:
        ``[B, gh, gw]``.
    """
    batch, tokens, _ = relevance.shape
    gh, gw = grid
    if tokens - num_prefix_tokens != gh * gw:
        raise ValueError(f"{tokens} tokens - {num_prefix_tokens} prefix tokens != grid {gh}x{gw}")
    row = torch.einsum("n,bnm->bm", query_weights.to(relevance), relevance)
    return row[:, num_prefix_tokens:].reshape(batch, gh, gw)


def resolve_start_layer(start_layer: int, num_blocks: int) -> int:
    """A start layer counted like a Python index (-1 = last block) -> ``0..L-1``."""
    if not -num_blocks <= start_layer < num_blocks:
        raise UsageError(f"start layer {start_layer} is out of range for {num_blocks} blocks "
                         f"(use {-num_blocks}..{num_blocks - 1})")
    return start_layer % num_blocks
