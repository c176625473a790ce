"""Generic attention explainability (Chefer, Gur & Wolf, ICCV 2021).

The self-attention rule: ``Abar_l = mean_h((dA_l * A_l)+)`` (clamp first,
mean after), ``R = I``, ``R = R + Abar_l @ R``. docs/METHODS.md#chefer-generic.
"""

from __future__ import annotations

from typing import Sequence

import torch

from heatmap.explainers.aggregation import accumulated_relevance
from heatmap.explainers import METHODS
from heatmap.explainers.base import Explainer


class CheferGeneric(Explainer):
    """Gradient-weighted attention accumulated with the identity."""

    name = "chefer-generic"
    needs_gradients = METHODS["chefer-generic"].needs_gradients
    defaults = METHODS["chefer-generic"].defaults

    def relevance(self, attention_probs: Sequence[torch.Tensor],
                  attention_grads: Sequence[torch.Tensor], start: int) -> torch.Tensor:
        fused = [(grads * probs).clamp(min=0).mean(dim=1)
                 for probs, grads in zip(attention_probs[start:], attention_grads, strict=True)]
        return accumulated_relevance(fused)
