"""Adapters that make models look alike to the explainers, and loading by name.

``load("demo")`` is the shipped classifier; any other name is a timm model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from heatmap.models.devices import resolve_device
from heatmap.models.timm_adapter import TimmAdapter

DEFAULT_MODEL = "vit_base_patch16_224"
DEMO = "demo"


def load(name: str | None = None, checkpoint: str | Path | None = None,
         device: str | torch.device = "auto") -> TimmAdapter:
    """Load a model by name (or from a local checkpoint) and wrap it in its adapter.

    Args:
        name: ``"demo"``, a timm name (``vit_base_patch16_224``, with an optional
            ``.tag``) or ``hf-hub:org/name``; None = ``vit_base_patch16_224``.
        checkpoint: a local ``.safetensors``/``.pt``/``.pth`` for that architecture.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
    """
    from heatmap.models.timm_models import create_demo_classifier, create_timm, imagenet_labels

    device = resolve_device(device)
    name = name or DEFAULT_MODEL
    if name == DEMO:
        model, labels = create_demo_classifier(checkpoint)
    else:
        model = create_timm(name, checkpoint)
        labels = imagenet_labels(model)
    return TimmAdapter(model.to(device), name, labels)


def adapter_for(model: torch.nn.Module, name: str | None = None) -> TimmAdapter:
    """Wrap a model object the caller built in its adapter."""
    from heatmap.models.timm_models import imagenet_labels
    name = name or getattr(model, "default_cfg", {}).get("architecture") or type(model).__name__
    return TimmAdapter(model, name, imagenet_labels(model))


__all__ = ["DEFAULT_MODEL", "DEMO", "TimmAdapter", "adapter_for", "load", "resolve_device"]
