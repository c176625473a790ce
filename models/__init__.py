"""Adapters that make models look alike to the explainers, and loading by name.

``load("demo")`` is the shipped classifier; any other name is a timm model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from heatmap.errors import UsageError
from heatmap.models.clip_adapter import ClipAdapter
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


def load_clip(name: str | None = None, pretrained: str | Path | None = None,
              device: str | torch.device = "auto") -> ClipAdapter:
    """Load an open_clip CLIP by name and tag (or local file) and wrap it in its adapter.

    Args:
        name: ``"demo"`` (shipped, offline) or an open_clip name; None = ``ViT-B-32``.
        pretrained: a pretrained tag or a local checkpoint path; None = ``openai``
            for the default model.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
    """
    from heatmap.models.clip_models import DEFAULT_CLIP, create_clip, create_demo_clip_with_transform

    device = resolve_device(device)
    if name == DEMO:
        if pretrained is not None:
            raise UsageError("--model demo takes no --pretrained; name an open_clip model for a checkpoint")
        model, tokenizer, preprocess = create_demo_clip_with_transform()
    else:
        if name is None:
            name, pretrained = DEFAULT_CLIP[0], pretrained or DEFAULT_CLIP[1]
        model, tokenizer, preprocess = create_clip(name, pretrained)
    return ClipAdapter(model.to(device), name, tokenizer, preprocess)


def weights_identity(name: str | None, weights: str | Path | None = None, clip: bool = False) -> str | None:
    """What identifies a model's weights beyond its name, for the manifest.

    A local weight file (``--checkpoint``, or ``--pretrained`` given a path) and
    the shipped demo models are identified by their file's sha256, so that a
    resumed run notices retrained weights at the same path; a pretrained tag by
    its name; a hub or timm name alone by None (the name says it).
    """
    from heatmap.models.checkpoints import file_digest

    if weights is not None and Path(weights).is_file():
        return file_digest(Path(weights))
    if weights is not None:
        return str(weights)
    if name == DEMO:
        demo_dir = Path(__file__).parent / "demo"
        return file_digest(demo_dir / ("clip.safetensors" if clip else "classifier.safetensors"))
    return None


def is_clip(model) -> bool:
    """Whether ``model`` is an open_clip model (object) rather than a classifier."""
    return hasattr(model, "visual") and hasattr(model, "encode_text")


def adapter_for(model: torch.nn.Module, name: str | None = None):
    """Wrap a model object the caller built in its adapter (timm ViT or open_clip CLIP)."""
    if is_clip(model):
        import open_clip
        name = name or type(model).__name__
        size = model.visual.image_size
        mean = getattr(model.visual, "image_mean", None)
        std = getattr(model.visual, "image_std", None)
        preprocess = open_clip.image_transform(size, is_train=False, mean=mean, std=std)
        return ClipAdapter(model, name, open_clip.get_tokenizer("ViT-B-32", context_length=model.context_length),
                           preprocess)
    from heatmap.models.timm_models import imagenet_labels
    name = name or getattr(model, "default_cfg", {}).get("architecture") or type(model).__name__
    return TimmAdapter(model, name, imagenet_labels(model))


__all__ = ["DEFAULT_MODEL", "DEMO", "ClipAdapter", "TimmAdapter", "adapter_for", "is_clip", "load", "load_clip",
           "resolve_device", "weights_identity"]
