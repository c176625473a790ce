"""Partial LRP (the CVPR 2021 paper's ``last_layer`` baseline on ``ViT_orig_LRP``).

docs/METHODS.md, "The CVPR 2021 paper's baselines": the LRP relevance of the
last block's attention under the ORIGINAL rules (the authors'
``layers_lrp.py``: Linear parts normalised separately, residual adds not
rescaled), clamped, mean over heads, the query row: ``mean_h((RA_{L-1})+)[q, P:]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from heatmap.explainers.registry import Evidence, Method, register

if TYPE_CHECKING:
    import torch


def relevance(evidence: Evidence, options: Mapping[str, Any]) -> torch.Tensor:
    import torch

    assert evidence.attention_relevance is not None
    last = evidence.attention_relevance[-1].clamp(min=0).mean(dim=1)  # clamp first, head mean after
    return torch.einsum("bn,bnm->bm", evidence.query.to(last), last)


METHOD = register(Method(
    name="partial-lrp",
    summary="Partial LRP: the last block's LRP relevance of the attention, original rules "
            "(the CVPR 2021 paper's baseline).",
    description="mean_h((RA)+) of the last block from an LRP pass under the original rules, at the query row.",
    options=(),
    relevance=relevance,
    reads_gradients=False,
    lrp_rules="original",
    default_start_layer=-1,
))
