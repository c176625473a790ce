"""Pure functions shared by the methods: the math of docs/METHODS.md, no model.

Every tensor has a leading batch dimension and every operation is per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from heatmap.errors import UsageError

# The maps are query rows of products of N x N matrices: ``q @ M_last @ ... @ M_first``. Evaluated left to
# right as vector-matrix products, a row costs O(L N^2) instead of the O(L N^3) of forming the products
# (tests/helpers/full_products.py keeps those as the reference the rows are checked against).


def _times(row: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``row @ matrix`` per item: ``[B, N]`` x ``[B, N, N]`` -> ``[B, N]``."""
    return torch.bmm(row[:, None, :], matrix)[:, 0]


def normalized_rollout_row(fused: Sequence[torch.Tensor], query: torch.Tensor) -> torch.Tensor:
    """The query row of ``R = M_last @ ... @ M_first`` with ``M_l = rownorm(F_l + I)``.

    Args:
        fused: per block from the start layer on, a head-fused map ``[B, N, N]``.
        query: ``[B, N]``: one-hot at the pooled token, or the mean-pooling weights.

    Returns:
        ``q @ R`` ``[B, N]``, in the maps' dtype.
    """
    row = query.to(fused[0])
    for matrix in reversed(fused):
        # r @ rownorm(F + I) = u @ F + u with u = r / (each row's sum of F, plus 1): the same product without
        # forming F + I or dividing all N^2 entries (each ROW of F + I sums to one, not each column)
        scaled = row / (matrix.sum(dim=-1) + 1)
        row = _times(scaled, matrix) + scaled
    return row


def unnormalized_rollout_row(fused: Sequence[torch.Tensor], query: torch.Tensor) -> torch.Tensor:
    """The query row of ``R = (I + Abar_last) @ ... @ (I + Abar_first)``, rows NOT normalised.

    Transformer attribution's aggregation (the paper's Eq. 13; METHODS.md).

    Args:
        fused: per block from the start layer on, ``Abar_l`` ``[B, N, N]``.
        query: ``[B, N]``.

    Returns:
        ``q @ R`` ``[B, N]``.
    """
    row = query.to(fused[0])
    for matrix in reversed(fused):
        row = row + _times(row, matrix)
    return row


def accumulated_relevance_row(fused: Sequence[torch.Tensor], query: torch.Tensor) -> torch.Tensor:
    """The query row of Chefer et al.'s self-attention rule: ``R = I``, then ``R = R + Abar_l @ R``.

    ``R_l = (I + Abar_l) @ R_(l-1)``, so ``q @ R`` is evaluated as
    :func:`unnormalized_rollout_row`'s product; the two rules are one product.

    Args:
        fused: per block from the start layer on, ``Abar_l`` ``[B, N, N]``.
        query: ``[B, N]``.

    Returns:
        ``q @ R`` ``[B, N]``, unnormalised.
    """
    return unnormalized_rollout_row(fused, query)


def query_row(relevance: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """The query row of ``R``: ``query @ R`` per item.

    Args:
        relevance: ``R`` ``[B, N, N]``.
        query: ``[B, N]``; one-hot at the pooled token, or uniform over the
            tokens a mean-pooling model averages (the mean of their rows).

    Returns:
        ``[B, N]``, in ``R``'s dtype.
    """
    return torch.einsum("bn,bnm->bm", query.to(relevance), relevance)


def fuse_heads(attention: torch.Tensor, head_fusion: str) -> torch.Tensor:
    """``[B, H, N, N]`` -> ``[B, N, N]`` by mean, max or min over heads."""
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    if head_fusion == "min":
        return attention.amin(dim=1)
    raise ValueError(f"unknown head fusion {head_fusion!r}")


def discard_lowest(fused: torch.Tensor, discard_ratio: float, protect: int | None = None) -> torch.Tensor:
    """Zero the ``floor(r * N * N)`` smallest entries of each image's ``[N, N]`` map.

    Args:
        fused: ``[B, N, N]``.
        discard_ratio: r in [0, 1).
        protect: a token t whose entry ``(t, t)`` is kept even when among the
            smallest (rollout keeps the class token's), or None.

    Returns:
        a new ``[B, N, N]`` tensor.
    """
    batch, tokens, _ = fused.shape
    count = math.floor(discard_ratio * tokens * tokens)
    if count == 0:
        return fused
    flat = fused.reshape(batch, -1)
    # the complement of the N^2 - count largest, found by topk (a tenth of the entries at the usual 0.9, several
    # times faster than the count smallest); entries tied at the boundary are left to topk, as in the authors' code
    largest = flat.topk(tokens * tokens - count, dim=-1, largest=True).indices
    keep = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, largest, True)
    if protect is not None:
        keep[:, protect * tokens + protect] = True
    return flat.masked_fill(~keep, 0.0).reshape(batch, tokens, tokens)


def resolve_start_layer(start_layer: int, num_blocks: int) -> int:
    """A start layer counted like a Python index (-1 = last block) -> ``0..L-1``."""
    if not -num_blocks <= start_layer < num_blocks:
        raise UsageError(f"start layer {start_layer} is out of range for {num_blocks} blocks "
                         f"(use {-num_blocks}..{num_blocks - 1})")
    return start_layer % num_blocks
