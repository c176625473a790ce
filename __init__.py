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


def explain(model, images, method: str = "chefer-generic", target=None, **options):
    """Explain what ``model`` looked at in each image.

    Args:
        model: a timm ViT object, a model name (``"demo"``, a timm name) or
            an adapter from :func:`load`.
        images: a preprocessed float tensor ``[B, 3, H, W]``, or a list of PIL
            images or paths (preprocessed with the model's own transform).
        method: ``rollout``, ``grad-rollout`` or ``chefer-generic``.
        target: None (top-1 class), a class index for every image, or a list
            with one index per image.
        **options: the method's options (``head_fusion``, ``discard_ratio``,
            ``start_layer``), as in METHODS.md.

    Returns:
        an Explanation with ``.maps`` ``[B, gh, gw]`` float32, ``.targets``
        ``[B]``, ``.scores`` ``[B]``, ``.labels``.
    """
    import torch

    from heatmap.errors import UsageError
    from heatmap.explainers import EXPLAINERS
    from heatmap.models import adapter_for

    if method not in EXPLAINERS:
        raise UsageError(f"unknown method {method!r}; use one of {', '.join(EXPLAINERS)}")
    if isinstance(model, str):
        adapter = load(model)
    elif isinstance(model, torch.nn.Module):
        adapter = adapter_for(model)
    else:
        adapter = model
    tensor = _as_tensor(adapter, images)
    if isinstance(target, int):
        target = [target] * tensor.shape[0]
    targets = None if target is None else torch.as_tensor(list(target), dtype=torch.long)
    return EXPLAINERS[method](adapter, **options).explain(tensor, targets).squeeze()


def _as_tensor(adapter, images):
    import torch

    from heatmap.images import load_image

    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise HeatmapError(f"images must be a [B, 3, H, W] tensor, got {tuple(images.shape)}")
        return images.to(adapter.device)
    pictures = [image if hasattr(image, "convert") else load_image(image) for image in images]
    return adapter.preprocess([picture.convert("RGB") for picture in pictures])[0]
