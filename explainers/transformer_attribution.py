"""Transformer attribution (Chefer, Gur & Wolf, CVPR 2021), for timm ViT classifiers.

docs/METHODS.md#transformer-attribution: after the forward pass, per target,
the gradients ``dA_l`` and an LRP pass (:mod:`heatmap.explainers.lrp`) that
gives the relevance ``RA_l`` of every block's attention probabilities; then
``Abar_l = mean_h((dA_l * RA_l)+)``, ``M_l = rownorm(Abar_l + I)`` and
``R = M_{L-1} @ ... @ M_s`` (the normalised rollout, not chefer-generic's
``R += Abar R``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from heatmap.errors import HeatmapError
from heatmap.explainers import METHODS
from heatmap.explainers.aggregation import normalized_rollout, resolve_start_layer
from heatmap.explainers.base import Explainer, Explanation
from heatmap.explainers.lrp import ActivationCapture, check_supported, lrp_pass
from heatmap.explainers.probe import AttentionProbe


def attribution_relevance(attention_grads: Sequence[torch.Tensor],
                          attention_relevance: Sequence[torch.Tensor]) -> torch.Tensor:
    """``R`` ``[B, N, N]`` from ``dA_l`` and ``RA_l`` of blocks ``s..L-1`` (METHODS.md).

    The clamp comes before the head mean, as in chefer-generic.
    """
    fused = [(grads * relevance).clamp(min=0).mean(dim=1)
             for grads, relevance in zip(attention_grads, attention_relevance, strict=True)]
    return normalized_rollout(fused)


class TransformerAttribution(Explainer):
    """LRP relevance of the attention, weighted by its gradient, rolled out.

    Raises:
        HeatmapError: at construction, before any work, for a model with an
            operation the LRP rules do not cover (see :func:`heatmap.explainers.lrp.check_supported`).
    """

    name = "transformer-attribution"
    needs_gradients = METHODS["transformer-attribution"].needs_gradients
    defaults = METHODS["transformer-attribution"].defaults

    def __init__(self, adapter, **options: Any) -> None:
        super().__init__(adapter, **options)
        if getattr(adapter, "model", None) is None:  # a CLIP tower (CLIP support comes later)
            raise HeatmapError("transformer-attribution supports timm VisionTransformer classifiers only, "
                               "not CLIP yet; rollout, grad-rollout and chefer-generic work for this model")
        check_supported(adapter.model, adapter.name)

    def relevance(self, attention_probs, attention_grads, start):
        # The LRP pass needs the forward's activations, which only explain() has.
        raise HeatmapError("transformer-attribution needs its LRP pass: use explain()")

    def explain(self, images: torch.Tensor, targets: torch.Tensor | None = None,
                top_k: int = 1) -> Explanation:
        """As :meth:`Explainer.explain`; the forward pass also records what the LRP pass reads.

        Per target: one backward pass for ``dA_l`` and one LRP pass for ``RA_l``,
        both reusing the single forward pass.
        """
        adapter = self.adapter
        start = resolve_start_layer(self.options["start_layer"], adapter.num_blocks)
        with AttentionProbe(adapter.model, adapter.attention_modules, adapter.name, track_from=start) as probe, \
                ActivationCapture(adapter.model, first_block=start) as capture:
            with torch.enable_grad():  # also under a caller's no_grad: the gradients need a graph
                logits = adapter.logits(images)
                targets = self._resolve_targets(logits.detach(), targets, top_k)
                scores = logits.gather(1, targets)
                objectives = scores.sum(dim=0).unbind()  # per target, summed over independent images
            probs = [p.detach().float() for p in probe.attention_probs]
            activations = capture.activations()
            relevances = []
            for k, objective in enumerate(objectives):
                grads = probe.attention_grads(objective, retain_graph=k + 1 < len(objectives))
                with torch.no_grad():
                    lrp = lrp_pass(adapter.model, activations, probs, targets[:, k])
                    relevances.append(attribution_relevance([g.float() for g in grads],
                                                            lrp.attention_relevance))
        return self._explanation(images, relevances, targets, scores)
