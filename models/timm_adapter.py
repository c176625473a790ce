"""The adapter for timm Vision Transformers (``timm.models.VisionTransformer``).

Everything model-specific lives here: the model's own preprocessing, its
blocks, its prefix tokens, how it pools, its grid and its class names. Nothing
here knows which method runs.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.models.vision_transformer import VisionTransformer

from heatmap.errors import HeatmapError, UsageError
from heatmap.models.geometry import crop_box

# Pooling a query row can be read for (docs/METHODS.md "query row").
SUPPORTED_POOLS = ("token", "avg")


class TimmAdapter:
    """A timm ViT classifier seen through the seams the explainers use.

    Args:
        model: a ``VisionTransformer`` (or subclass), put in eval mode here.
        name: how the user named it (for messages and the manifest).
        labels: class names by index, or None.

    Raises:
        HeatmapError: for a model whose pooling has no query row.
    """

    def __init__(self, model: torch.nn.Module, name: str, labels: Sequence[str] | None = None) -> None:
        if not isinstance(model, VisionTransformer):
            raise HeatmapError(f"{name}: {type(model).__name__} is not a timm VisionTransformer; "
                               "vit-heatmap explains ViT-style models (vit_*, deit_*, ...)")
        if getattr(model, "attn_pool", None) is not None or model.global_pool not in SUPPORTED_POOLS:
            raise HeatmapError(f"{name}: pooling {model.global_pool!r} (attention-pool head) is not "
                               f"supported; models that pool by {' or '.join(SUPPORTED_POOLS)} are")
        if model.global_pool == "token" and not model.has_class_token:
            raise HeatmapError(f"{name}: token pooling without a class token is not supported")
        self.model = model.eval()
        self.name = name
        self.labels = list(labels) if labels is not None else None
        self.transform = create_transform(**resolve_data_config({}, model=model))

    # -- structure -----------------------------------------------------------

    @property
    def attention_modules(self) -> list[torch.nn.Module]:
        """The attention module of each block, in forward order."""
        return [block.attn for block in self.model.blocks]

    @property
    def num_blocks(self) -> int:
        return len(self.model.blocks)

    def lrp_view(self):
        """The structure transformer-attribution's LRP pass reads (:mod:`heatmap.models.timm_lrp`).

        Raises:
            HeatmapError: naming the first operation the LRP rules do not cover.
        """
        from heatmap.models.timm_lrp import timm_lrp_view
        return timm_lrp_view(self.model, self.name)

    @property
    def num_prefix_tokens(self) -> int:
        """P: class, distillation and register tokens before the patches."""
        return self.model.num_prefix_tokens

    @property
    def class_token_index(self) -> int | None:
        """The class token's position when the model pools by it, else None."""
        return 0 if self.model.global_pool == "token" else None

    def query_weights(self, num_tokens: int) -> torch.Tensor:
        """``[N]`` weights whose product with ``R`` is the query row.

        One-hot at the class token; for mean pooling, uniform over the tokens
        the model averages (the mean of their rows).
        """
        weights = torch.zeros(num_tokens, dtype=torch.float64)  # cast to the relevance's dtype where used
        if self.class_token_index is not None:
            weights[self.class_token_index] = 1.0
        else:
            first = 0 if getattr(self.model, "pool_include_prefix", False) else self.num_prefix_tokens
            weights[first:] = 1.0 / (num_tokens - first)
        return weights

    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        """``(gh, gw)``, read from the model and the input size, never assumed."""
        patch_embed = self.model.patch_embed
        if getattr(self.model, "dynamic_img_size", False):
            return tuple(patch_embed.dynamic_feat_size(tuple(images.shape[-2:])))
        return tuple(patch_embed.grid_size)

    # -- data ----------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights."""
        return next(self.model.parameters()).dtype

    def converted(self, dtype: torch.dtype) -> "TimmAdapter":
        """This adapter when the model is in ``dtype`` already, else one over a converted copy.

        The caller's model is never changed; the copy costs the model's size once per run.
        """
        if dtype == self.dtype:
            return self
        return TimmAdapter(copy.deepcopy(self.model).to(dtype), self.name, self.labels)

    def preprocess(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, list[tuple[float, float, float, float]]]:
        """The model's own eval transform.

        Returns:
            ``[B, 3, H, W]`` on the model's device and dtype, and per image the
            box ``(left, top, right, bottom)`` of the original picture that the
            tensor shows (the centre crop, say), for overlays at full size.
        """
        param = next(self.model.parameters())
        tensor = torch.stack([self.transform(image) for image in images])
        boxes = [crop_box(self.transform, image.size) for image in images]
        return tensor.to(device=param.device, dtype=param.dtype), boxes

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-softmax class scores ``[B, C]``."""
        return self.model(images)

    def label(self, index: int) -> str | None:
        """The class name of ``index``, or None when the model has none."""
        if self.labels is None or not 0 <= index < len(self.labels):
            return None
        return self.labels[index]

    def class_index(self, target: str) -> int:
        """A target given as an index or a class name -> the class index."""
        num_classes = self.model.num_classes
        if target.lstrip("-").isdigit():
            index = int(target)
        elif self.labels is None:
            raise UsageError(f"{self.name} has no class names; give the target as an index 0..{num_classes - 1}")
        else:
            matches = [i for i, label in enumerate(self.labels) if label.lower() == target.lower()]
            if not matches:
                import difflib
                close = difflib.get_close_matches(target, self.labels, n=3)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise UsageError(f"{self.name} has no class {target!r}{hint}")
            index = matches[0]
        if not 0 <= index < num_classes:
            raise UsageError(f"target {index} is out of range: {self.name} has {num_classes} classes (0..{num_classes - 1})")
        return index
