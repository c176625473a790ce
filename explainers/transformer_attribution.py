"""Transformer attribution (Chefer, Gur & Wolf, CVPR 2021).

docs/METHODS.md#transformer-attribution: after the forward pass, per target,
the gradients ``dA_l`` and an LRP pass (:mod:`heatmap.explainers.lrp`, run by
the driver) that gives the relevance ``RA_l`` of every block's attention
probabilities; then ``Abar_l = mean_h((dA_l * RA_l)+)`` and
``R = (I + Abar_{L-1}) @ ... @ (I + Abar_s)``, with rows NOT normalised (the
paper's Eq. 13; not rollout's ``rownorm``, not chefer-generic's ``R += Abar R``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from heatmap.explainers.registry import Evidence, Method, register, start_layer_option

if TYPE_CHECKING:
    import torch


def relevance(evidence: Evidence, options: Mapping[str, Any]) -> torch.Tensor:
    from heatmap.explainers.aggregation import unnormalized_rollout_row

    assert evidence.attention_grads is not None and evidence.attention_relevance is not None
    # the clamp comes before the head mean, as in the authors' code
    fused = [(grads * relevance).clamp(min=0).mean(dim=1)
             for grads, relevance in zip(evidence.attention_grads, evidence.attention_relevance, strict=True)]
    return unnormalized_rollout_row(fused, evidence.query)


METHOD = register(Method(
    name="transformer-attribution",
    summary="Transformer attribution: LRP relevance of the attention times its gradient, rolled out "
            "(Chefer, Gur & Wolf, CVPR 2021).",
    description="LRP relevance of each block's attention times its gradient, rolled out (CVPR 2021).",
    options=(start_layer_option(),),
    relevance=relevance,
    lrp_rules="transformer-attribution",
))
