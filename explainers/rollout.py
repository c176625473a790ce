"""Attention rollout (Abnar & Zuidema, 2020), with the options of vit-explain.

Class-agnostic: the map is the same for every target. docs/METHODS.md#rollout.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from heatmap.errors import UsageError
from heatmap.explainers.aggregation import normalized_rollout
from heatmap.explainers import HEAD_FUSIONS, METHODS
from heatmap.explainers.base import Explainer

def fuse_heads(attention: torch.Tensor, head_fusion: str) -> torch.Tensor:
    """``[B, H, N, N]`` -> ``[B, N, N]`` by mean, max or min over heads."""
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    if head_fusion == "min":
        return attention.amin(dim=1)
    raise UsageError(f"unknown head fusion {head_fusion!r}; use one of {', '.join(HEAD_FUSIONS)}")


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
    flat = fused.reshape(batch, -1).clone()
    lowest = flat.topk(count, dim=-1, largest=False).indices
    discard = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, lowest, True)
    if protect is not None:
        discard[:, protect * tokens + protect] = False
    return flat.masked_fill(discard, 0.0).reshape(batch, tokens, tokens)


class Rollout(Explainer):
    """Attention rollout: ``R = prod rownorm(fuse_h(A_l) + I)``."""

    name = "rollout"
    needs_gradients = METHODS["rollout"].needs_gradients
    defaults = METHODS["rollout"].defaults

    @classmethod
    def validate_options(cls, options) -> None:
        if options["head_fusion"] not in HEAD_FUSIONS:
            raise UsageError(f"unknown head fusion {options['head_fusion']!r}; use one of {', '.join(HEAD_FUSIONS)}")
        check_discard_ratio(options["discard_ratio"])

    def relevance(self, attention_probs: Sequence[torch.Tensor], attention_grads, start: int) -> torch.Tensor:
        protect = self.adapter.class_token_index
        fused = [discard_lowest(fuse_heads(probs, self.options["head_fusion"]),
                                self.options["discard_ratio"], protect)
                 for probs in attention_probs[start:]]
        return normalized_rollout(fused)


def check_discard_ratio(ratio: float) -> None:
    """Discard ratios live in [0, 1)."""
    if not 0.0 <= ratio < 1.0:
        raise UsageError(f"discard ratio {ratio} is out of range; use a value in [0, 1)")
