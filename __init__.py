"""vit-heatmap: what a Vision Transformer looked at.

The public API is small::

    import heatmap
    result = heatmap.explain("demo", ["scene.png"], "chefer-generic")
    result.maps      # float32 [B, gh, gw], the raw maps of METHODS.md
    result.targets   # [B] class indices (top-1 by default)
    result.scores    # [B] the target logits

Heavy libraries (torch, timm) are imported on first use, not on import.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["HeatmapError", "__version__", "explain", "load", "methods"]

from heatmap.errors import HeatmapError


def load(name=None, checkpoint=None, device="auto"):
    """Load a model by name and return its adapter (see :func:`heatmap.models.load`)."""
    from heatmap.models import load as load_model
    return load_model(name, checkpoint=checkpoint, device=device)


def methods() -> list[str]:
    """The names of the methods, as the CLI spells them."""
    from heatmap.explainers import EXPLAINERS
    return list(EXPLAINERS)


def explain(model, images, method: str = "chefer-generic", target=None, texts=None, precision: str = "auto",
            **options):
    """Explain what ``model`` looked at in each image.

    Args:
        model: a timm ViT or open_clip CLIP object, a model name (``"demo"``,
            a timm name, or with ``texts`` an open_clip name) or an adapter
            from :func:`load`.
        images: a preprocessed float tensor ``[B, 3, H, W]``, or a list of PIL
            images or paths (preprocessed with the model's own transform).
        method: ``rollout``, ``grad-rollout``, ``chefer-generic`` or
            ``transformer-attribution``.
        target: classifiers: None (top-1 class), a class index for every
            image, or a list with one index per image.
        texts: CLIP: the texts to explain each image against.
        precision: ``auto`` (the wider of float32 and the model's dtype: a
            bfloat16 model is explained in float32, a float64 model in
            float64), ``float32`` or ``float64`` (a converted copy of the
            model is explained; yours is not changed). docs/METHODS.md, "Precision".
        **options: the method's options (``head_fusion``, ``discard_ratio``,
            ``start_layer``; for CLIP also ``text_start_layer``), as in
            docs/METHODS.md.

    Returns:
        classifiers: an Explanation with ``.maps`` ``[B, gh, gw]`` (in the
        explanation's dtype),
        ``.targets`` ``[B]``, ``.scores`` ``[B]``, ``.labels``.
        CLIP: a ClipExplanation with ``.maps`` ``[B, T, gh, gw]``, ``.logits``
        ``[B, T]``, ``.text_relevance`` (per image, per text, per word piece)
        and ``.word_pieces``.
    """
    import torch

    from heatmap.errors import UsageError
    from heatmap.explainers import METHODS
    from heatmap.models import adapter_for, load_clip

    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if isinstance(model, str):
        adapter = load_clip(model) if texts is not None else load(model)
    elif isinstance(model, torch.nn.Module):
        adapter = adapter_for(model)
    else:
        adapter = model
    if hasattr(adapter, "text"):  # a CLIP adapter
        if texts is None:
            raise UsageError("a CLIP model explains images against texts: pass texts=[...]")
        from heatmap.explainers.clip import ClipExplainer
        clip_explainer = ClipExplainer(adapter, method, precision=precision, **options)
        return clip_explainer.explain(_as_tensor(clip_explainer.adapter, images), list(texts))
    if texts is not None:
        raise UsageError(f"{adapter.name} is a classifier; texts= is for CLIP models (use target=)")
    explainer = METHODS[method].explainer_class()(adapter, precision=precision, **options)
    tensor = _as_tensor(explainer.adapter, images)
    if isinstance(target, int):
        target = [target] * tensor.shape[0]
    targets = None if target is None else torch.as_tensor(list(target), dtype=torch.long)
    return explainer.explain(tensor, targets).squeeze()


def _as_tensor(adapter, images):
    import torch

    from heatmap.images import load_image

    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise HeatmapError(f"images must be a [B, 3, H, W] tensor, got {tuple(images.shape)}")
        return images.to(adapter.device)
    pictures = [image if hasattr(image, "convert") else load_image(image) for image in images]
    return adapter.preprocess([picture.convert("RGB") for picture in pictures])[0]
