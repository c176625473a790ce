"""Generic attention explainability (Chefer, Gur & Wolf, ICCV 2021).

The self-attention rule: ``Abar_l = mean_h((dA_l * A_l)+)`` (clamp first,
mean after), ``R = I``, ``R = R + Abar_l @ R``. docs/METHODS.md#chefer-generic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from heatmap.explainers.registry import Evidence, Method, register, start_layer_option

if TYPE_CHECKING:
    import torch


def fused_block(probs: torch.Tensor, grads: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """``Abar_l = mean_h((dA_l * A_l)+)`` ``[B, N, N]``: the clamp first, the head mean after."""
    return (grads * probs).clamp(min=0).mean(dim=1)


def relevance(evidence: Evidence, options: Mapping[str, Any]) -> torch.Tensor:
    from heatmap.explainers.aggregation import accumulated_relevance_row

    assert evidence.attention_grads is not None  # each block's fused_block
    return accumulated_relevance_row(evidence.attention_grads, evidence.query)


METHOD = register(Method(
    name="chefer-generic",
    summary="Generic attention explainability (Chefer, Gur & Wolf, ICCV 2021).",
    description="R = I, then R += mean_h((dA * A)+) @ R for each block from the start layer on.",
    options=(start_layer_option(),),
    relevance=relevance,
    reduce_gradient=fused_block,
    # the authors' CLIP notebook uses the last block only, in both towers
    clip_defaults={"start_layer": -1},
))
