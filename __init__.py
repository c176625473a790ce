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

import operator
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, Union, overload

from heatmap.errors import HeatmapError, UnsupportedModelError, UsageError

if TYPE_CHECKING:
    import os

    import torch
    from PIL import Image

    from heatmap.evaluation.api import EvalResult
    from heatmap.explainers.driver import ClipExplanation, Explanation
    from heatmap.models.protocols import Adapter

    ImageInput = Union[str, os.PathLike[str], Image.Image]
    Images = Union[torch.Tensor, ImageInput, Sequence[ImageInput]]
    Target = Union[int, str]

__version__ = "0.1.0"

__all__ = ["HeatmapError", "UnsupportedModelError", "UsageError", "__version__", "evaluate", "explain", "load",
           "load_clip", "methods"]

Precision = Literal["auto", "float32", "float64"]


def load(name: str | None = None, checkpoint: str | None = None, device: str = "auto") -> Adapter:
    """Load a classifier by name (``"demo"``, a timm name, a Hugging Face transformers repo id or folder) and
    return its adapter (:func:`heatmap.models.load`)."""
    from heatmap.models import load as load_model

    return load_model(name, checkpoint=checkpoint, device=device)


def load_clip(name: str | None = None, pretrained: str | None = None, device: str = "auto") -> Adapter:
    """Load an image-text model by name (``"demo"``, an open_clip name with a pretrained tag or a local file, a
    Hugging Face transformers CLIP/SigLIP repo id or folder) and return its adapter
    (:func:`heatmap.models.load_clip`)."""
    from heatmap.models import load_clip as load_image_text

    return load_image_text(name, pretrained=pretrained, device=device)


def methods() -> list[str]:
    """The names of the methods, as the CLI spells them (no torch is imported)."""
    from heatmap.explainers.registry import methods as registered

    return list(registered())


@overload
def explain(model: Any, images: Images, method: str = ..., target: Target | Sequence[Target] | None = ...,
            texts: None = ..., precision: Precision = ..., processor: Any = ..., *,
            targets: Sequence[Target] | None = ..., top_k: int = ..., **options: Any) -> Explanation: ...


@overload
def explain(model: Any, images: Images, method: str = ..., target: None = ...,
            *, texts: Sequence[str], precision: Precision = ..., processor: Any = ...,
            **options: Any) -> ClipExplanation: ...


def explain(model: Any, images: Images, method: str = "chefer-generic",
            target: Target | Sequence[Target] | None = None, texts: Sequence[str] | None = None,
            precision: Precision = "auto", processor: Any = None, *, targets: Sequence[Target] | None = None,
            top_k: int = 1, **options: Any) -> Explanation | ClipExplanation:
    """Explain what ``model`` looked at in each image.

    Args:
        model: a timm ViT, open_clip CLIP or Hugging Face transformers model
            object (ViT, DeiT, CLIP, SigLIP), a model name (``"demo"``, a timm
            name, a Hugging Face repo id or ``save_pretrained`` directory, or
            with ``texts`` an open_clip name) or an adapter from :func:`load`.
        images: one path or PIL image, a list of them (preprocessed with the
            model's own transform; the result keeps the pictures and their
            crop boxes, for :meth:`~heatmap.explainers.driver.Explanation.overlay`),
            or a preprocessed float tensor ``[B, 3, H, W]``.
        method: one of :func:`methods` (docs/METHODS.md has the math).
        target: classifiers: ONE class per image: None (the top-1 class), a
            class index or name for every image, or a list with one per image.
        texts: CLIP: the texts to explain each image against.
        precision: ``auto`` (the wider of float32 and the model's dtype: a
            bfloat16 model is explained in float32, a float64 model in
            float64), ``float32`` or ``float64`` (a converted copy of the
            model is explained; yours is not changed). docs/METHODS.md, "Precision".
        processor: a transformers model object's processor (or image processor,
            or for CLIP/SigLIP its tokenizer), when the model's ``name_or_path``
            does not find them in the Hugging Face cache.
        targets: classifiers: SEVERAL classes (indices or names), each explained
            for every image, as the CLI's repeated ``--target``: maps ``[B, K, gh, gw]``.
        top_k: classifiers: explain each image's ``top_k`` highest classes
            (maps ``[B, K, gh, gw]`` when above 1), as the CLI's ``--top-k``.
        **options: the method's options (``head_fusion``, ``discard_ratio``,
            ``start_layer``; for CLIP also ``text_start_layer``).

    Returns:
        classifiers: an :class:`~heatmap.explainers.driver.Explanation` with
        ``.maps`` ``[B, gh, gw]`` (in the explanation's dtype; ``[B, K, gh, gw]``
        with ``targets`` or ``top_k``), ``.targets``, ``.scores``, ``.labels``.
        CLIP: a :class:`~heatmap.explainers.driver.ClipExplanation` with
        ``.maps`` ``[B, T, gh, gw]``, ``.logits`` ``[B, T]``,
        ``.text_relevance`` (per image, per text, per word piece) and ``.word_pieces``.
    """
    from heatmap.explainers.driver import Driver
    from heatmap.models import resolve_adapter

    adapter = resolve_adapter(model, clip=texts is not None, processor=processor)
    driver = Driver(adapter, method, precision=precision, **options)
    tensor, pictures, boxes = _prepared(driver.adapter, images)
    kept: dict[str, Any] = {"pictures": pictures, "boxes": boxes, "sources": _sources(images), "model": adapter.name}
    if driver.clip:
        if texts is None:
            raise UsageError("a CLIP model explains images against texts: pass texts=[...]")
        if target is not None or targets is not None or top_k != 1:
            raise UsageError("target=, targets= and top_k= are for classifiers; a CLIP is explained per text")
        return replace(driver.explain_texts(tensor, list(texts)), **kept)
    if texts is not None:
        raise UsageError(f"{adapter.name} is a classifier; texts= is for CLIP models (use target=)")
    wanted = _class_targets(driver.adapter, tensor.shape[0], target, targets, top_k)
    explanation = replace(driver.explain(tensor, wanted, top_k=top_k), **kept)
    return explanation if targets is not None or top_k != 1 else explanation.squeeze()


def _class_targets(adapter: Any, count: int, target: Any, targets: Sequence[Any] | None,
                   top_k: int) -> torch.Tensor | None:
    """``[B, K]`` class indices from ``target`` (one per image) or ``targets`` (the same for every image); None
    for the top ``top_k``. Names are looked up in the model's class names."""
    import torch

    if target is not None and targets is not None:
        raise UsageError("give target= (one class per image) or targets= (several classes for every image), not both")
    if (target is not None or targets is not None) and top_k != 1:
        raise UsageError("top_k= picks the classes itself; leave it out when giving target= or targets=")
    if targets is not None:
        if isinstance(targets, (str, int)) or not len(targets):
            raise UsageError("targets= takes a non-empty list of classes (indices or names)")
        row = [_class_index(adapter, item) for item in targets]
        return torch.tensor([row] * count, dtype=torch.long)
    if target is None:
        return None
    per_image = [target] * count if isinstance(target, (str, int)) else list(target)
    if len(per_image) != count:
        raise UsageError(f"target= has {len(per_image)} classes for {count} images: give one per image, or one "
                         "for all (targets= explains several classes for every image)")
    return torch.tensor([[_class_index(adapter, item)] for item in per_image], dtype=torch.long)


def _class_index(adapter: Any, target: Any) -> int:
    """A class name, or anything integer-like (an int, a numpy or 0-d torch integer) -> the class index."""
    if isinstance(target, str):
        return int(adapter.class_index(target))
    if isinstance(target, bool) or not hasattr(target, "__index__"):
        raise UsageError(f"a target is a class index or name, got {target!r}")
    return int(adapter.class_index(str(operator.index(target))))


def evaluate(model: Any, images: Any, method: Union[str, Sequence[str]],
             protocol: Union[str, Sequence[str], None] = None, target: Literal["predicted", "label"] | None = None,
             labels: Sequence[Any] | None = None, masks: Sequence[Any] | None = None,
             texts: Sequence[str] | None = None, mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None, batch_size: int = 32, tolerance: int = 0,
             processor: Any = None, seed: int = 0, bootstrap: int = 1000) -> EvalResult:
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
        seed: seeds the random maps (``method="random"``), the tie-breaks of the pixel rankings and the bootstrap.
        bootstrap: resamplings of the images for each 95% interval.

    Returns:
        an :class:`~heatmap.evaluation.api.EvalResult`: the sequence of per-image records
        (:class:`~heatmap.evaluation.evaluate.ImageEvaluation`, ``.as_json()`` is the ``eval.jsonl``
        line), with ``.summary()`` (each figure and its interval), ``.comparisons()`` (paired
        differences, the best and the tied), ``.table()`` (the printed tables), ``.to_json()`` and ``.plot()``.
    """
    from heatmap.evaluation.api import evaluate as run

    return run(model, images, method, protocol, target, labels, masks, texts, mean, std, batch_size, tolerance,
               processor, seed, bootstrap)


def _sources(images: Any) -> list[str] | None:
    """The paths of the images when every one was given as a path (what ``save`` names the inputs by)."""
    import os

    items = [images] if isinstance(images, (str, os.PathLike)) else images
    if isinstance(items, (list, tuple)) and items and all(isinstance(item, (str, os.PathLike)) for item in items):
        return [str(item) for item in items]
    return None


def _prepared(adapter: Adapter, images: Images) -> tuple[torch.Tensor, list[Any] | None, list[Any] | None]:
    """``images`` as the model's input tensor, and (for pictures) the pictures and the crop box of each."""
    import os

    import torch

    from heatmap.inputs import load_image

    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise UsageError(f"images must be a [B, 3, H, W] tensor, got {tuple(images.shape)}")
        return images, None, None
    # one picture (a path is not a sequence of characters) or several
    items: Sequence[Any] = [images] if isinstance(images, (str, os.PathLike)) or hasattr(images, "convert") else images
    pictures = [(image if hasattr(image, "convert") else load_image(image)).convert("RGB") for image in items]
    if not pictures:
        raise UsageError("give at least one image")
    tensor, boxes = adapter.preprocess(pictures)
    return tensor, pictures, list(boxes)
