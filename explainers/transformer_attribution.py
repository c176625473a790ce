"""Transformer attribution (Chefer, Gur & Wolf, CVPR 2021), for timm ViTs and CLIP towers.

docs/METHODS.md#transformer-attribution: after the forward pass, per target,
the gradients ``dA_l`` and an LRP pass (:mod:`heatmap.explainers.lrp`) that
gives the relevance ``RA_l`` of every block's attention probabilities; then
``Abar_l = mean_h((dA_l * RA_l)+)`` and ``R = (I + Abar_{L-1}) @ ... @ (I + Abar_s)``,
with rows NOT normalised (the paper's Eq. 13; not rollout's ``rownorm``, not
chefer-generic's ``R += Abar R``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from heatmap.errors import HeatmapError
from heatmap.explainers import METHODS
from heatmap.explainers.aggregation import unnormalized_rollout
from heatmap.explainers.base import Explainer
from heatmap.explainers.lrp import lrp_pass
from heatmap.models.lrp_view import ActivationCapture


def attribution_relevance(attention_grads: Sequence[torch.Tensor],
                          attention_relevance: Sequence[torch.Tensor]) -> torch.Tensor:
    """``R`` ``[B, N, N]`` from ``dA_l`` and ``RA_l`` of blocks ``s..L-1`` (METHODS.md).

    The clamp comes before the head mean, as in chefer-generic.
    """
    fused = [(grads * relevance).clamp(min=0).mean(dim=1)
             for grads, relevance in zip(attention_grads, attention_relevance, strict=True)]
    return unnormalized_rollout(fused)


class TransformerAttribution(Explainer):
    """LRP relevance of the attention, weighted by its gradient, rolled out.

    Works on any adapter with an ``lrp_view()``: a timm classifier, or one
    tower of a CLIP (through :class:`~heatmap.explainers.clip.ClipExplainer`).

    Raises:
        HeatmapError: at construction, before any work, for a model with an
            operation the LRP rules do not cover, naming it.
    """

    name = "transformer-attribution"
    needs_gradients = METHODS["transformer-attribution"].needs_gradients
    defaults = METHODS["transformer-attribution"].defaults

    def __init__(self, adapter, **options: Any) -> None:
        super().__init__(adapter, **options)
        self.view = self.adapter.lrp_view()

    def relevance(self, attention_probs, attention_grads, start):
        # The LRP pass needs the forward's activations: target_relevance has them.
        raise HeatmapError("transformer-attribution needs its LRP pass: use explain()")

    def recording(self, start: int) -> ActivationCapture:
        """The activations the LRP pass reads, recorded during the one forward pass."""
        return self.view.capture(start)

    def target_relevance(self, attention_probs: Sequence[torch.Tensor], attention_grads: Sequence[torch.Tensor],
                         start: int, recorded: ActivationCapture, target: torch.Tensor) -> torch.Tensor:
        """One LRP pass for ``target`` gives ``RA_l``; weighted by ``dA_l`` and rolled out.

        ``target``: class indices ``[B]``, or for a CLIP tower ``[B, E]``, the
        score's gradient with respect to the unit embedding (see :func:`lrp_pass`).
        """
        with torch.no_grad():
            lrp = lrp_pass(self.view, recorded.activations(), attention_probs, target)
            return attribution_relevance(attention_grads, lrp.attention_relevance)
