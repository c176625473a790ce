"""Gradient attention rollout (vit-explain), with its two bugs fixed.

Each block's probabilities are paired with the gradient with respect to those
same probabilities (not another block's, not the pre-softmax scores'). The
head mean comes first, the clamp after; no entry is protected from the
discard. docs/METHODS.md#grad-rollout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from heatmap.explainers.registry import Evidence, Method, discard_ratio_option, register, start_layer_option

if TYPE_CHECKING:
    import torch


def fused_block(probs: torch.Tensor, grads: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """``(mean_h(A_l * dA_l))+`` ``[B, N, N]``: the head mean first, the clamp after."""
    return (probs * grads).mean(dim=1).clamp(min=0)


def relevance(evidence: Evidence, options: Mapping[str, Any]) -> torch.Tensor:
    from heatmap.explainers.aggregation import discard_lowest, normalized_rollout_row

    assert evidence.attention_grads is not None  # each block's fused_block
    fused = [discard_lowest(block, options["discard_ratio"]) for block in evidence.attention_grads]
    return normalized_rollout_row(fused, evidence.query)


METHOD = register(Method(
    name="grad-rollout",
    summary="Gradient attention rollout (vit-explain, with its bugs fixed).",
    description="Rollout of each block's attention weighted by its gradient, negatives clamped.",
    options=(discard_ratio_option(0.9), start_layer_option()),
    relevance=relevance,
    reduce_gradient=fused_block,
))
