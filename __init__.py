"""vit-heatmap: what a Vision Transformer or a CLIP model looked at.

The public API is small::

    import heatmap
    result = heatmap.explain("demo", ["scene.png"], "chefer-generic")
    result.maps      # [B, gh, gw], the raw maps of docs/METHODS.md
    result.targets   # [B] class indices (top-1 by default)
    result.scores    # [B] the target logits

Heavy libraries (torch, timm, open_clip) are imported on first use, not on import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Union, overload

from heatmap.errors import HeatmapError, UnsupportedModelError, UsageError

if TYPE_CHECKING:
    import os

    import torch
    from PIL import Image

    from heatmap.explainers.driver import ClipExplanation, Explanation
    from heatmap.models.protocols import Adapter

    ImageInput = Union[str, os.PathLike[str], Image.Image]
    Images = Union[torch.Tensor, Sequence[ImageInput]]

__version__ = "0.1.0"

__all__ = ["HeatmapError", "UnsupportedModelError", "UsageError", "__version__", "evaluate", "explain", "load",
           "methods"]

Precision = Literal["auto", "float32", "float64"]


def load(name: str | None = None, checkpoint: str | None = None, device: str = "auto") -> Adapter:
    """Load a classifier by name (``"demo"``, a timm name, a Hugging Face transformers repo id or folder) and
    return its adapter (:func:`heatmap.models.load`)."""
    from heatmap.models import load as load_model

    return load_model(name, checkpoint=checkpoint, device=device)


def methods() -> list[str]:
    """The names of the methods, as the CLI spells them (no torch is imported)."""
    from heatmap.explainers.registry import methods as registered

    return list(registered())


@overload
def explain(model: Any, images: Images, method: str = ..., target: int | Sequence[int] | None = ...,
            texts: None = ..., precision: Precision = ..., processor: Any = ..., **options: Any) -> Explanation: ...


@overload
def explain(model: Any, images: Images, method: str = ..., target: None = ...,
            *, texts: Sequence[str], precision: Precision = ..., processor: Any = ...,
            **options: Any) -> ClipExplanation: ...


def explain(model: Any, images: Images, method: str = "chefer-generic", target: int | Sequence[int] | None = None,
            texts: Sequence[str] | None = None, precision: Precision = "auto", processor: Any = None,
            **options: Any) -> Explanation | ClipExplanation:
    """Explain what ``model`` looked at in each image.

    Args:
        model: a timm ViT, open_clip CLIP or Hugging Face transformers model
            object (ViT, DeiT, CLIP, SigLIP), a model name (``"demo"``, a timm
            name, a Hugging Face repo id or ``save_pretrained`` directory, or
            with ``texts`` an open_clip name) or an adapter from :func:`load`.
        images: a preprocessed float tensor ``[B, 3, H, W]``, or a list of PIL
            images or paths (preprocessed with the model's own transform).
        method: one of :func:`methods` (docs/METHODS.md has the math).
        target: classifiers: None (top-1 class), a class index for every
            image, or a list with one index per image.
        texts: CLIP: the texts to explain each image against.
        precision: ``auto`` (the wider of float32 and the model's dtype: a
            bfloat16 model is explained in float32, a float64 model in
            float64), ``float32`` or ``float64`` (a converted copy of the
            model is explained; yours is not changed). docs/METHODS.md, "Precision".
        processor: a transformers model object's processor (or image processor,
            or for CLIP/SigLIP its tokenizer), when the model's ``name_or_path``
            does not find them in the Hugging Face cache.
        **options: the method's options (``head_fusion``, ``discard_ratio``,
            ``start_layer``; for CLIP also ``text_start_layer``).

    Returns:
        classifiers: an :class:`~heatmap.explainers.driver.Explanation` with
        ``.maps`` ``[B, gh, gw]`` (in the explanation's dtype), ``.targets``
        ``[B]``, ``.scores`` ``[B]``, ``.labels``.
        CLIP: a :class:`~heatmap.explainers.driver.ClipExplanation` with
        ``.maps`` ``[B, T, gh, gw]``, ``.logits`` ``[B, T]``,
        ``.text_relevance`` (per image, per text, per word piece) and ``.word_pieces``.
    """
    import torch

    from heatmap.explainers.driver import Driver
    from heatmap.models import resolve_adapter

    adapter = resolve_adapter(model, clip=texts is not None, processor=processor)
    driver = Driver(adapter, method, precision=precision, **options)
    tensor = _as_tensor(driver.adapter, images)
    if driver.clip:
        if texts is None:
            raise UsageError("a CLIP model explains images against texts: pass texts=[...]")
        return driver.explain_texts(tensor, list(texts))
    if texts is not None:
        raise UsageError(f"{adapter.name} is a classifier; texts= is for CLIP models (use target=)")
    if isinstance(target, int):
        target = [target] * tensor.shape[0]
    targets = None if target is None else torch.as_tensor(list(target), dtype=torch.long)
    return driver.explain(tensor, targets).squeeze()


def evaluate(model: Any, images: Any, method: Union[str, Sequence[str]],
             protocol: Union[str, Sequence[str], None] = None, target: Literal["predicted", "label"] | None = None,
             labels: Sequence[Any] | None = None, masks: Sequence[Any] | None = None,
             texts: Sequence[str] | None = None, mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None, batch_size: int = 32, tolerance: int = 0,
             processor: Any = None) -> list[Any]:
    """Measure how far ``method``'s maps can be trusted on ``model`` (docs/METHODS.md, "The evaluation protocols").

    Args:
        model: a timm, open_clip or transformers model object, a model name or an adapter (as :func:`explain`).
        images: paths or PIL images (made up with the model's own transform,
            without its normalisation), or a float tensor ``[B, 3, H, W]`` in
            [0, 1] pixel space at the model's input size.
        method: a method name, or several.
        protocol: ``perturbation``, ``deletion-insertion``, ``pointing``,
            ``energy-pointing``, ``segmentation``, or several; None: every
            protocol the data allows (the last three need ``masks``).
        target: ``"predicted"`` (None; the model's top-1 class, or best text)
            or ``"label"`` (each of the image's ``labels``).
        labels: per image, a label or a list of them (class indices or names;
            for a CLIP, texts from ``texts``).
        masks: per image, its object's mask (array, PIL image or path;
            nonzero = object; at the picture's size or the input size), or a
            dict label -> mask for several objects.
        texts: a CLIP's candidate texts: an image's "class" is its best-matching text.
        mean, std: the normalisation the model expects (default: its transform's).
        batch_size: perturbed copies per forward pass.
        tolerance: the pointing game's tolerance in pixels.
        processor: a transformers model object's processor, as for :func:`explain`.

    Returns:
        per image, method and target an
        :class:`~heatmap.evaluation.evaluate.ImageEvaluation` with the curves
        and figures (``.as_json()`` is the ``eval.jsonl`` line);
        :func:`heatmap.evaluation.evaluate.summarise` gives the data set's figures.
    """
    from heatmap.evaluation.api import evaluate as run

    return run(model, images, method, protocol, target, labels, masks, texts, mean, std, batch_size, tolerance,
               processor)


def _as_tensor(adapter: Adapter, images: Images) -> torch.Tensor:
    import torch

    from heatmap.inputs import load_image

    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise UsageError(f"images must be a [B, 3, H, W] tensor, got {tuple(images.shape)}")
        return images
    pictures = [image if hasattr(image, "convert") else load_image(image) for image in images]
    return adapter.preprocess([picture.convert("RGB") for picture in pictures])[0]
