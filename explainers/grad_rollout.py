"""Gradient attention rollout (vit-explain), with its two bugs fixed.

Each block's probabilities are paired with the gradient with respect to those
same probabilities (not another block's, not the pre-softmax scores'). The
head mean comes first, the clamp after. docs/METHODS.md#grad-rollout.
"""

from __future__ import annotations

from typing import Sequence

import torch

from heatmap.explainers.aggregation import normalized_rollout
from heatmap.explainers import METHODS
from heatmap.explainers.base import Explainer
from heatmap.explainers.rollout import check_discard_ratio, discard_lowest


class GradRollout(Explainer):
    """Gradient rollout: ``R = prod rownorm(discard(mean_h(A * dA)+) + I)``."""

    name = "grad-rollout"
    needs_gradients = METHODS["grad-rollout"].needs_gradients
    defaults = METHODS["grad-rollout"].defaults

    @classmethod
    def validate_options(cls, options) -> None:
        check_discard_ratio(options["discard_ratio"])

    def relevance(self, attention_probs: Sequence[torch.Tensor],
                  attention_grads: Sequence[torch.Tensor], start: int) -> torch.Tensor:
        fused = []
        for probs, grads in zip(attention_probs[start:], attention_grads, strict=True):
            weighted = (probs * grads).mean(dim=1).clamp(min=0)
            # No entry is protected here, unlike plain rollout.
            fused.append(discard_lowest(weighted, self.options["discard_ratio"]))
        return normalized_rollout(fused)
