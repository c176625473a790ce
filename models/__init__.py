"""Loading models by name and wrapping them in their library's adapter.

``load("demo")`` is the shipped classifier, a Hugging Face repo id
(``org/name``) or ``save_pretrained`` directory a transformers model, any
other name a timm model; ``load_clip`` the shipped demo CLIP, a transformers
CLIP or SigLIP, or an open_clip model. Each library's adapter
(``models/timm/``, ``models/open_clip/``, ``models/hf/``) is imported only
when a model of that library is loaded or wrapped, so importing this package
loads none of the libraries.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from heatmap.errors import UsageError
from heatmap.models.devices import resolve_device

if TYPE_CHECKING:
    import torch

    from heatmap.models.hf.classifier import HfClassifierAdapter
    from heatmap.models.hf.image_text import HfImageTextAdapter
    from heatmap.models.open_clip.adapter import ClipAdapter
    from heatmap.models.protocols import Adapter, ClassifierAdapter, ImageTextAdapter
    from heatmap.models.timm.adapter import TimmAdapter

    # The type checker holds each library's adapter to its protocol (the conformance test, to what they return).
    _CLASSIFIERS: tuple[type[ClassifierAdapter], ...] = (TimmAdapter, HfClassifierAdapter)
    _IMAGE_TEXT: tuple[type[ImageTextAdapter], ...] = (ClipAdapter, HfImageTextAdapter)

DEFAULT_MODEL = "vit_base_patch16_224"
DEMO = "demo"


def load(name: str | None = None, checkpoint: str | Path | None = None,
         device: str | torch.device = "auto") -> TimmAdapter | HfClassifierAdapter:
    """Load a classifier by name (or from a local checkpoint) and wrap it in its adapter.

    Args:
        name: ``"demo"``, a timm name (``vit_base_patch16_224``, with an optional
            ``.tag``), ``hf-hub:org/name`` (timm's), a Hugging Face transformers
            repo id (``google/vit-base-patch16-224``) or ``save_pretrained``
            directory; None = ``vit_base_patch16_224``.
        checkpoint: a local ``.safetensors``/``.pt``/``.pth`` for that timm architecture.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
    """
    from heatmap.models.hf.loading import is_hf_name

    if is_hf_name(name):
        assert name is not None
        classifier: HfClassifierAdapter = _load_transformers(name, "classifier", checkpoint,
                                                             "--checkpoint is for timm models", device)
        return classifier
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
              device: str | torch.device = "auto") -> ClipAdapter | HfImageTextAdapter:
    """Load a CLIP by name and wrap it in its adapter.

    Args:
        name: ``"demo"`` (shipped, offline), an open_clip name, or a Hugging
            Face transformers CLIP/SigLIP repo id (``openai/clip-vit-base-patch32``)
            or ``save_pretrained`` directory; None = ``ViT-B-32``.
        pretrained: an open_clip model's pretrained tag or a local checkpoint
            path; None = ``openai`` for the default model.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
    """
    from heatmap.models.hf.loading import is_hf_name

    if is_hf_name(name):
        assert name is not None
        image_text: HfImageTextAdapter = _load_transformers(name, "image-text", pretrained,
                                                            "--pretrained is for open_clip models", device)
        return image_text
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


def _load_transformers(name: str, kind: Literal["classifier", "image-text"], weights: object, refusal: str,
                       device: str | torch.device) -> Any:
    """A transformers model by repo id or folder; a separate weights option is refused (its weights come with it)."""
    from heatmap.models.hf.loading import load_hf

    if weights is not None:
        raise UsageError(f"{name} is a transformers model: its weights come with it (repo id or save_pretrained "
                         f"directory); {refusal}")
    return load_hf(name, kind, resolve_device(device))


def weights_identity(name: str | None, weights: str | Path | None = None, clip: bool = False) -> str | None:
    """What identifies a model's weights beyond its name, for the manifest.

    A local weight file (``--checkpoint``, or ``--pretrained`` given a path) and
    the shipped demo models are identified by their file's sha256, so that a
    resumed run notices retrained weights at the same path; a pretrained tag by
    its name; a hub or timm name alone by None (the name says it).
    """
    from heatmap.models.checkpoints import file_digest
    from heatmap.models.hf.loading import is_hf_name, weights_digest

    if is_hf_name(name) and weights is None:
        assert name is not None
        return weights_digest(name)
    if weights is not None and Path(weights).is_file():
        return file_digest(Path(weights))
    if weights is not None:
        return str(weights)
    if name == DEMO:
        demo_dir = Path(__file__).resolve().parent.parent / "demo"
        return file_digest(demo_dir / ("clip.safetensors" if clip else "classifier.safetensors"))
    return None


def is_clip(model: object) -> bool:
    """Whether ``model`` is an image-text model (open_clip or transformers object) rather than a classifier."""
    if is_transformers(model):
        return hasattr(model, "text_model") and hasattr(model, "vision_model")
    return hasattr(model, "visual") and hasattr(model, "encode_text")


def is_transformers(model: object) -> bool:
    """Whether ``model`` is a Hugging Face transformers model object (checked without importing transformers)."""
    return type(model).__module__.startswith("transformers.")


def adapter_for(model: Any, name: str | None = None, processor: Any = None
                ) -> TimmAdapter | ClipAdapter | HfClassifierAdapter | HfImageTextAdapter:
    """Wrap a model object the caller built in its library's adapter (timm ViT, open_clip CLIP, transformers).

    Args:
        model: the model object.
        name: how to call it in messages and manifests (default: its own name).
        processor: transformers models: its processor, image processor or
            tokenizer, when the model's ``name_or_path`` cannot find them;
            open_clip models: its tokenizer (default: CLIP's byte-pair one).
    """
    if is_transformers(model):
        from heatmap.models.hf.loading import image_transform, tokenizer_of

        name = name or str(getattr(model, "name_or_path", "") or type(model).__name__)
        transform = image_transform(model, name, processor)
        if is_clip(model):
            from heatmap.models.hf.image_text import HfImageTextAdapter

            return HfImageTextAdapter(model, name, tokenizer_of(model, name, processor), transform)
        from heatmap.models.hf.classifier import HfClassifierAdapter

        return HfClassifierAdapter(model, name, transform)
    if is_clip(model):
        import open_clip

        from heatmap.models.open_clip.adapter import ClipAdapter

        visual = model.visual
        size = visual.image_size
        preprocess = open_clip.image_transform(size, is_train=False, mean=getattr(visual, "image_mean", None),
                                               std=getattr(visual, "image_std", None))
        tokenizer = (processor if processor is not None
                     else open_clip.get_tokenizer("ViT-B-32", context_length=model.context_length))
        return ClipAdapter(model, name or type(model).__name__, tokenizer, preprocess)
    from timm.models.eva import Eva
    from timm.models.naflexvit import NaFlexVit
    from timm.models.vision_transformer import VisionTransformer

    from heatmap.models.timm.adapter import TimmAdapter  # refuses anything but a timm ViT, naming it
    from heatmap.models.timm.loading import imagenet_labels

    name = name or getattr(model, "default_cfg", {}).get("architecture") or type(model).__name__
    timm_vit = isinstance(model, (VisionTransformer, Eva, NaFlexVit))
    return TimmAdapter(model, name, imagenet_labels(model) if timm_vit else None)


def resolve_adapter(model: str | torch.nn.Module | Adapter, clip: bool, processor: Any = None,
                    device: str | torch.device = "auto") -> Adapter:
    """A model argument as the public API takes it -> its adapter (``heatmap.explain``, ``heatmap.evaluate``,
    the pytest plugin).

    Args:
        model: a name (:func:`load`, or :func:`load_clip` when ``clip``), a model
            object (:func:`adapter_for`), or an adapter (returned as it is).
        clip: a name is a CLIP's (texts were given).
        processor: a transformers model object's processor, image processor or tokenizer; an open_clip
            model object's tokenizer.
        device: where a model loaded by name goes.

    Raises:
        UsageError: ``processor`` beside a name or an adapter (they bring their own).
    """
    import torch

    if processor is not None and not isinstance(model, torch.nn.Module):
        raise UsageError("processor= is for a transformers model object (or an open_clip one's tokenizer); a name "
                         "or an adapter brings its own")
    if isinstance(model, str):
        return load_clip(model, device=device) if clip else load(model, device=device)
    if isinstance(model, torch.nn.Module):
        return adapter_for(model, processor=processor)
    return model


__all__ = ["DEFAULT_MODEL", "DEMO", "adapter_for", "is_clip", "is_transformers", "load", "load_clip",
           "resolve_adapter", "resolve_device", "weights_identity"]
