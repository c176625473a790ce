"""Raw attention (the CVPR 2021 paper's ``last_layer_attn`` baseline).

docs/METHODS.md, "The CVPR 2021 paper's baselines": the last block's
attention, mean over heads, the query row: ``mean_h(A_{L-1})[q, P:]``.
Class-agnostic, and forward only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from heatmap.explainers.registry import Evidence, Method, register

if TYPE_CHECKING:
    import torch


def relevance(evidence: Evidence, options: Mapping[str, Any]) -> torch.Tensor:
    import torch

    last = evidence.attention_probs[-1]  # [B, H, N, N]
    return torch.einsum("bn,bnm->bm", evidence.query.to(last), last.mean(dim=1))


METHOD = register(Method(
    name="raw-attention",
    summary="Raw attention: the last block's attention, head mean (the CVPR 2021 paper's baseline).",
    description="mean_h(A) of the last block, read at the query row; class-agnostic.",
    options=(),
    relevance=relevance,
    reads_gradients=False,
    class_agnostic=True,
    default_start_layer=-1,
))
