"""Attention rollout (Abnar & Zuidema, 2020), with the options of vit-explain.

Class-agnostic: the map is the same for every target. docs/METHODS.md#rollout:
``R = M_{L-1} @ ... @ M_s`` with ``M_l = rownorm(discard(fuse_h(A_l)) + I)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from heatmap.explainers.registry import Evidence, Method, Option, discard_ratio_option, register, start_layer_option

if TYPE_CHECKING:
    import torch

HEAD_FUSIONS = ("mean", "max", "min")


def relevance(evidence: Evidence, options: Mapping[str, Any]) -> torch.Tensor:
    # torch-backed math is imported on first use, so that listing methods needs no torch
    from heatmap.explainers.aggregation import discard_lowest, fuse_heads, normalized_rollout_row

    fused = [discard_lowest(fuse_heads(probs, options["head_fusion"]), options["discard_ratio"],
                            protect=evidence.class_token)
             for probs in evidence.attention_probs]
    return normalized_rollout_row(fused, evidence.query)


METHOD = register(Method(
    name="rollout",
    summary="Attention rollout (Abnar & Zuidema 2020): class-agnostic.",
    description="Multiplies each block's head-fused attention (plus identity, rows normalised) "
                "from the start layer on.",
    options=(Option("head_fusion", "mean", "How to fuse the heads of each block.", choices=HEAD_FUSIONS),
             discard_ratio_option(0.0),
             start_layer_option()),
    relevance=relevance,
    reads_gradients=False,
    class_agnostic=True,
))
