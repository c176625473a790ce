"""The adapter for timm Vision Transformers (``timm.models.VisionTransformer``).

Everything timm-specific lives here: the model's own preprocessing, its
blocks and how their attention is exposed (timm's fused-attention switch),
its prefix tokens, how it pools, its grid and its class names. Nothing here
knows which method runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from timm.data import create_transform, resolve_data_config
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from heatmap.errors import UnsupportedModelError
from heatmap.models.base import query_weights
from heatmap.models.capture import AttentionRecorder
from heatmap.models.classifier import ClassifierBase
from heatmap.models.protocols import LrpView, TowerKind

# Pooling a query row can be read for (docs/METHODS.md "query row").
SUPPORTED_POOLS = ("token", "avg")


class TimmTower:
    """The one (image) tower of a timm ViT."""

    kind: TowerKind = "image"

    def __init__(self, model: Any, name: str) -> None:
        self.model = model
        self.name = name

    @property
    def num_blocks(self) -> int:
        return len(self.model.blocks)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.model.num_prefix_tokens)

    @property
    def class_token(self) -> int | None:
        return 0 if self.model.global_pool == "token" else None

    def query(self, batch: int, num_tokens: int) -> torch.Tensor:
        """``[B, N]``: one-hot at the class token; for mean pooling, uniform over the averaged tokens."""
        first = 0 if getattr(self.model, "pool_include_prefix", False) else self.num_prefix_tokens
        return query_weights(batch, num_tokens, self.class_token, first)

    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        """``(gh, gw)``, read from the model and the input size, never assumed."""
        patch_embed = self.model.patch_embed
        if getattr(self.model, "dynamic_img_size", False):
            height, width = patch_embed.dynamic_feat_size(tuple(images.shape[-2:]))
        else:
            height, width = patch_embed.grid_size
        return int(height), int(width)

    @contextmanager
    def attention_capture(self, track_from: int | None) -> Iterator[AttentionRecorder]:
        """timm's explicit attention path for the duration of a ``with``, its probabilities recorded.

        The fused kernel never forms the attention matrix, so each module is
        switched to its explicit path (softmax -> attn_drop -> @ v; the output
        of attn_drop, the identity in eval mode, is exactly the matrix that
        multiplies V) and switched back on exit, also on error.
        """
        recorder = AttentionRecorder(self.num_blocks, track_from, self.name)
        modules = [block.attn for block in self.model.blocks]
        for index, module in enumerate(modules):
            if not (hasattr(module, "fused_attn") and isinstance(getattr(module, "attn_drop", None), nn.Module)):
                raise UnsupportedModelError(
                    f"{self.name}: block {index} uses {type(module).__name__}, an attention implementation "
                    "vit-heatmap does not know; no attention map can be made")
        was_fused = [module.fused_attn for module in modules]
        handles = []
        try:
            for index, module in enumerate(modules):
                module.fused_attn = False
                handles.append(module.attn_drop.register_forward_hook(
                    lambda _module, _inputs, output, index=index: recorder.record(index, output)))
            for index, block in enumerate(self.model.blocks):
                handles.append(block.register_forward_hook(
                    lambda _module, _inputs, output, index=index: recorder.record_output(index, output)))
            yield recorder
        finally:
            for handle in handles:
                handle.remove()
            for module, fused in zip(modules, was_fused, strict=False):
                module.fused_attn = fused

    def block_readout(self, tokens: torch.Tensor) -> torch.Tensor:
        """The logits ``head(fc_norm(pool(norm(x))))`` of a block's output tokens (docs/METHODS.md, legrad)."""
        logits: torch.Tensor = self.model.forward_head(self.model.norm(tokens))
        return logits

    def block_readout_problem(self) -> str | None:
        return None

    def lrp_view(self) -> LrpView:
        from heatmap.models.timm.lrp import timm_lrp_view

        return timm_lrp_view(self.model, self.name)


def check_architecture(model: Any, name: str) -> None:
    """Refuse a timm model vit-heatmap cannot explain, naming why (also for a model built on the meta device).

    Raises:
        UnsupportedModelError: not a ``VisionTransformer``, or a pooling with no query row.
    """
    if not isinstance(model, VisionTransformer):
        raise UnsupportedModelError(f"{name}: {type(model).__name__} is not a timm VisionTransformer; "
                                    "vit-heatmap explains ViT-style models (vit_*, deit_*, ...)")
    if getattr(model, "attn_pool", None) is not None or model.global_pool not in SUPPORTED_POOLS:
        raise UnsupportedModelError(f"{name}: pooling {model.global_pool!r} (attention-pool head) is not "
                                    f"supported; models that pool by {' or '.join(SUPPORTED_POOLS)} are")
    if model.global_pool == "token" and not model.has_class_token:
        raise UnsupportedModelError(f"{name}: token pooling without a class token is not supported")


class TimmAdapter(ClassifierBase):
    """A timm ViT classifier seen through the seams the driver uses.

    Args:
        model: a ``VisionTransformer`` (or subclass), put in eval mode here.
        name: how the user named it (for messages and the manifest).
        labels: class names by index, or None.

    Raises:
        UnsupportedModelError: for a model whose pooling has no query row.
    """

    def __init__(self, model: Any, name: str, labels: Sequence[str] | None = None) -> None:
        check_architecture(model, name)
        self.model = model.eval()
        self.name = name
        self.labels = list(labels) if labels is not None else None
        self.transform = create_transform(**resolve_data_config({}, model=model))
        self.tower = TimmTower(model, name)

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(images)
        return logits

    def rebuilt(self, model: Any) -> TimmAdapter:
        return TimmAdapter(model, self.name, self.labels)
