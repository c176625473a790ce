"""Loading models by name and wrapping them in their library's adapter.

``load("demo")`` is the shipped classifier, any other name a timm model;
``load_clip`` the shipped demo CLIP or an open_clip model. Each library's
adapter (``models/timm/``, ``models/open_clip/``) is imported only when a
model of that library is loaded or wrapped, so importing this package loads
neither timm nor open_clip.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from heatmap.errors import UsageError
from heatmap.models.devices import resolve_device

if TYPE_CHECKING:
    import torch

    from heatmap.models.open_clip.adapter import ClipAdapter
    from heatmap.models.timm.adapter import TimmAdapter

DEFAULT_MODEL = "vit_base_patch16_224"
DEMO = "demo"


def load(name: str | None = None, checkpoint: str | Path | None = None,
         device: str | torch.device = "auto") -> TimmAdapter:
    """Load a classifier by name (or from a local checkpoint) and wrap it in its adapter.

    Args:
        name: ``"demo"``, a timm name (``vit_base_patch16_224``, with an optional
            ``.tag``) or ``hf-hub:org/name``; None = ``vit_base_patch16_224``.
        checkpoint: a local ``.safetensors``/``.pt``/``.pth`` for that architecture.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
    """
    from heatmap.models.timm.adapter import TimmAdapter
    from heatmap.models.timm.loading import create_timm, imagenet_labels

    resolved = resolve_device(device)
    name = name or DEFAULT_MODEL
    if name == DEMO:
        from heatmap.demo.classifier import create_demo_classifier

        model, demo_labels = create_demo_classifier(checkpoint)
        labels: list[str] | None = demo_labels
    else:
        model = create_timm(name, checkpoint)
        labels = imagenet_labels(model)
    return TimmAdapter(model.to(resolved), name, labels)


def load_clip(name: str | None = None, pretrained: str | Path | None = None,
              device: str | torch.device = "auto") -> ClipAdapter:
    """Load an open_clip CLIP by name and tag (or local file) and wrap it in its adapter.

    Args:
        name: ``"demo"`` (shipped, offline) or an open_clip name; None = ``ViT-B-32``.
        pretrained: a pretrained tag or a local checkpoint path; None = ``openai``
            for the default model.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
    """
    from heatmap.models.open_clip.adapter import ClipAdapter
    from heatmap.models.open_clip.loading import DEFAULT_CLIP, create_clip

    resolved = resolve_device(device)
    if name == DEMO:
        if pretrained is not None:
            raise UsageError("--model demo takes no --pretrained; name an open_clip model for a checkpoint")
        from heatmap.demo.clip import create_demo_clip_with_transform

        model, tokenizer, preprocess = create_demo_clip_with_transform()
    else:
        if name is None:
            name, pretrained = DEFAULT_CLIP[0], pretrained or DEFAULT_CLIP[1]
        model, tokenizer, preprocess = create_clip(name, pretrained)
    return ClipAdapter(model.to(resolved), name, tokenizer, preprocess)


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
        demo_dir = Path(__file__).resolve().parent.parent / "demo"
        return file_digest(demo_dir / ("clip.safetensors" if clip else "classifier.safetensors"))
    return None


def is_clip(model: object) -> bool:
    """Whether ``model`` is an open_clip model (object) rather than a classifier."""
    return hasattr(model, "visual") and hasattr(model, "encode_text")


def adapter_for(model: Any, name: str | None = None) -> TimmAdapter | ClipAdapter:
    """Wrap a model object the caller built in its library's adapter (timm ViT or open_clip CLIP)."""
    if is_clip(model):
        import open_clip

        from heatmap.models.open_clip.adapter import ClipAdapter

        visual = model.visual
        size = visual.image_size
        preprocess = open_clip.image_transform(size, is_train=False, mean=getattr(visual, "image_mean", None),
                                               std=getattr(visual, "image_std", None))
        tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=model.context_length)
        return ClipAdapter(model, name or type(model).__name__, tokenizer, preprocess)
    from timm.models.vision_transformer import VisionTransformer

    from heatmap.models.timm.adapter import TimmAdapter  # refuses anything but a timm ViT, naming it
    from heatmap.models.timm.loading import imagenet_labels

    name = name or getattr(model, "default_cfg", {}).get("architecture") or type(model).__name__
    return TimmAdapter(model, name, imagenet_labels(model) if isinstance(model, VisionTransformer) else None)


__all__ = ["DEFAULT_MODEL", "DEMO", "adapter_for", "is_clip", "load", "load_clip", "resolve_device",
           "weights_identity"]
