"""The methods, registered by the names the CLI uses.

``METHODS`` is the one list that the CLI, its help text and the tests
iterate. It imports nothing heavy, so ``heatmap --help`` stays fast; each
method's class (and torch) is imported when first used. The math of each is
in docs/METHODS.md and in its own file here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Mapping


HEAD_FUSIONS = ("mean", "max", "min")


@dataclass(frozen=True)
class Method:
    """One method: its CLI name, a one-line summary, its options' defaults."""

    name: str
    summary: str
    defaults: Mapping[str, Any]
    location: str = field(repr=False)  # "module:Class"
    needs_gradients: bool = True
    clip_defaults: Mapping[str, Any] = field(default_factory=dict)  # overrides for CLIP models

    def explainer_class(self):
        """The Explainer subclass (imports torch)."""
        module, cls = self.location.split(":")
        return getattr(importlib.import_module(module), cls)


METHODS: dict[str, Method] = {method.name: method for method in (
    Method("rollout", "Attention rollout (Abnar & Zuidema 2020): class-agnostic.",
           {"head_fusion": "mean", "discard_ratio": 0.0, "start_layer": 0},
           "heatmap.explainers.rollout:Rollout", needs_gradients=False),
    Method("grad-rollout", "Gradient attention rollout (vit-explain, with its bugs fixed).",
           {"discard_ratio": 0.9, "start_layer": 0},
           "heatmap.explainers.grad_rollout:GradRollout"),
    Method("chefer-generic", "Generic attention explainability (Chefer, Gur & Wolf, ICCV 2021).",
           {"start_layer": 0},
           "heatmap.explainers.chefer_generic:CheferGeneric",
           # the authors' CLIP notebook uses the last block only, in both towers
           clip_defaults={"start_layer": -1}),
    Method("transformer-attribution",
           "Transformer attribution: LRP relevance of the attention times its gradient, rolled out "
           "(Chefer, Gur & Wolf, CVPR 2021).",
           {"start_layer": 0},
           "heatmap.explainers.transformer_attribution:TransformerAttribution"),
)}


def __getattr__(name: str):
    # EXPLAINERS (name -> class) on first use, so that importing METHODS stays light.
    if name == "EXPLAINERS":
        return {method.name: method.explainer_class() for method in METHODS.values()}
    if name in ("Explainer", "Explanation"):
        return getattr(importlib.import_module("heatmap.explainers.base"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EXPLAINERS", "HEAD_FUSIONS", "METHODS", "Method"]
