"""The adapter for timm Vision Transformers (``VisionTransformer``, ``Eva``, ``NaFlexVit``).

Everything timm-specific lives here: the model's own preprocessing, its
blocks and how their attention is exposed (timm's fused-attention switch),
its prefix tokens, how it pools, its grid and its class names. Nothing here
knows which method runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import create_transform, resolve_data_config
from timm.models.eva import Eva
from timm.models.naflexvit import NaFlexVit
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from heatmap.errors import UnsupportedModelError
from heatmap.models.attention_pool import PooledRecorder
from heatmap.models.base import query_weights
from heatmap.models.capture import AttentionRecorder, FusedRecorder, additive_bias
from heatmap.models.classifier import ClassifierBase
from heatmap.models.protocols import LrpView, TowerKind
from heatmap.models.timm.pool_head import pool_head_problem, recorded_pool_head

# Pooling a query row can be read for (docs/METHODS.md "query row"; "map": the attention-pool head's probe).
SUPPORTED_POOLS = ("token", "avg", "map")


class TimmTower:
    """The (image) tower of a timm ViT: ``VisionTransformer``, ``Eva`` (EVA02, DINOv3, Perception Encoder, rope
    ViTs) or ``NaFlexVit``, with class-token, mean or attention-pool ("map") pooling.

    With an attention-pool head the probe is token 0 and the head the layer
    ``L`` (docs/METHODS.md, "Modern ViT parts"; :mod:`heatmap.models.attention_pool`).
    """

    kind: TowerKind = "image"

    def __init__(self, model: Any, name: str) -> None:
        self.model = model
        self.name = name
        self.pool_head = getattr(model, "attn_pool", None)

    @property
    def num_blocks(self) -> int:
        """The layers the methods read: the blocks, and the attention-pool head when there is one."""
        return len(self.model.blocks) + (self.pool_head is not None)

    @property
    def num_prefix_tokens(self) -> int:
        """The model's class and register tokens, after the probe of an attention-pool head."""
        return int(self.model.num_prefix_tokens) + (self.pool_head is not None)

    @property
    def class_token(self) -> int | None:
        return 0 if self.pool_head is not None or self.model.global_pool == "token" else None

    def query(self, batch: int, num_tokens: int) -> torch.Tensor:
        """``[B, N]``: one-hot at the class token (or the probe); for mean pooling, uniform over the averaged tokens."""
        first = 0 if getattr(self.model, "pool_include_prefix", False) else self.num_prefix_tokens
        return query_weights(batch, num_tokens, self.class_token, first)

    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        """``(gh, gw)``, read from the model and the input size, never assumed."""
        embeds = getattr(self.model, "embeds", None)
        if embeds is not None:  # NaFlexVit: any input size, its own patch size
            patch_h, patch_w = embeds.patch_size
            return images.shape[-2] // patch_h, images.shape[-1] // patch_w
        patch_embed = self.model.patch_embed
        if getattr(self.model, "dynamic_img_size", False):
            height, width = patch_embed.dynamic_feat_size(tuple(images.shape[-2:]))
        else:
            height, width = patch_embed.grid_size
        return int(height), int(width)

    @contextmanager
    def attention_capture(self, track_from: int | None, fused: bool = False) -> Iterator[AttentionRecorder]:
        """Each block's probabilities recorded for the duration of a ``with``, and its output tokens.

        Eager (the default): the fused kernel never forms the attention
        matrix, so each module is switched to its explicit path (softmax ->
        attn_drop -> @ v; the output of attn_drop, the identity in eval mode,
        is exactly the matrix that multiplies V) and switched back on exit,
        also on error. An attention-pool head computes explicitly too
        (:mod:`heatmap.models.timm.pool_head`). ``fused`` (a model without an
        attention-pool head): the blocks keep the fused kernel, each call of it
        from a block goes through :meth:`FusedRecorder.attend`.
        """
        blocks = len(self.model.blocks)
        for index, block in enumerate(self.model.blocks):  # the model may have changed since the adapter was made
            problem = block_problem(index, block)
            if problem:
                raise UnsupportedModelError(f"{self.name}: {problem}")
        fused = fused and self.pool_head is None
        recorder = (FusedRecorder(blocks, track_from, self.name) if fused
                    else PooledRecorder(blocks, track_from, self.name) if self.pool_head is not None
                    else AttentionRecorder(blocks, track_from, self.name))
        modules = [block.attn for block in self.model.blocks]
        was_fused = [module.fused_attn for module in modules]
        handles = [self.model.register_forward_pre_hook(_refuse_patch_dictionaries)]
        try:
            for index, block in enumerate(self.model.blocks):
                handles.append(block.register_forward_hook(
                    lambda _module, _inputs, output, index=index: recorder.record_output(index, output)))
            with ExitStack() as stack:
                if isinstance(recorder, FusedRecorder):
                    stack.enter_context(_fused_blocks(modules, recorder))
                else:
                    for index, module in enumerate(modules):
                        module.fused_attn = False
                        handles.append(module.attn_drop.register_forward_hook(
                            lambda _module, _inputs, output, index=index: recorder.record(index, output)))
                if isinstance(recorder, PooledRecorder) and self.pool_head is not None:
                    stack.enter_context(recorded_pool_head(self.pool_head, recorder.record_head))
                yield recorder
        finally:
            for handle in handles:
                handle.remove()
            for module, was in zip(modules, was_fused, strict=False):
                module.fused_attn = was

    def block_readout(self, tokens: torch.Tensor) -> torch.Tensor:
        """The logits ``head(fc_norm(pool(norm(x))))`` of a block's output tokens, through the model's whole
        read-out, an attention-pool head included (docs/METHODS.md, legrad)."""
        logits: torch.Tensor = self.model.forward_head(self.model.norm(tokens))
        return logits

    def block_readout_problem(self) -> str | None:
        return None

    def lrp_view(self) -> LrpView:
        from heatmap.models.timm.lrp import timm_lrp_view

        return timm_lrp_view(self.model, self.name)


@contextmanager
def _fused_blocks(modules: list[nn.Module], recorder: FusedRecorder) -> Iterator[None]:
    """Within: each module runs its fused path, and its call of ``F.scaled_dot_product_attention`` (with its q and
    k after norms and rotary embedding) goes through ``recorder.attend``; other calls pass through untouched."""
    current: list[int | None] = [None]  # the block whose attention is running
    kernel = F.scaled_dot_product_attention

    def tapped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
               dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
               **kwargs: Any) -> torch.Tensor:
        index = current[0]
        if index is None or dropout_p or kwargs:
            return kernel(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                          **kwargs)
        biases = [additive_bias(attn_mask, keep_is_true=True, dtype=q.dtype)]
        if is_causal:
            causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
            biases.append(additive_bias(causal, keep_is_true=True, dtype=q.dtype))
        given = [part for part in biases if part is not None]
        bias = sum(given[1:], given[0]) if given else None
        return recorder.attend(index, q, k, v, bias, q.shape[-1] ** -0.5 if scale is None else scale)

    def enter(index: int) -> Callable[..., None]:
        return lambda *_: current.__setitem__(0, index)

    handles = []
    for index, module in enumerate(modules):
        module.fused_attn = True  # type: ignore[assignment]  # timm declares it a torch.jit.Final[bool]
        handles.append(module.register_forward_pre_hook(enter(index)))
        handles.append(module.register_forward_hook(lambda *_: current.__setitem__(0, None)))
    # timm's modules call torch.nn.functional.scaled_dot_product_attention through the module object
    F.scaled_dot_product_attention = tapped  # type: ignore[assignment]  # the same call, recorded
    try:
        yield
    finally:
        F.scaled_dot_product_attention = kernel
        for handle in handles:
            handle.remove()


def _refuse_patch_dictionaries(_model: nn.Module, args: tuple[Any, ...]) -> None:
    """NaFlex's patch dictionaries pad each image's patches to one count; vit-heatmap explains image tensors."""
    if args and isinstance(args[0], dict):
        raise UnsupportedModelError("variable patch counts (a NaFlex patch dictionary with padded patches) are not "
                                    "supported; pass images as a [B, 3, H, W] tensor")


def check_architecture(model: Any, name: str) -> None:
    """Refuse a timm model vit-heatmap cannot explain, naming the part (also for a model built on the meta device).

    Raises:
        UnsupportedModelError: for a model class, block, attention or pooling no rule covers.
    """
    problem = architecture_problem(model)
    if problem:
        raise UnsupportedModelError(f"{name}: {problem}")


def check_has_head(model: Any, name: str) -> None:
    """Refuse a timm model without a classifier head: its outputs are features, with no class score to explain.

    Raises:
        UnsupportedModelError: for ``num_classes == 0`` (timm's feature models: DINOv2/v3, SigLIP, EVA02 bases).
    """
    if int(getattr(model, "num_classes", 0)) == 0:
        raise UnsupportedModelError(f"{name} has no classifier head (num_classes=0): its outputs are features, not "
                                    "class scores; pass --checkpoint FILE with a head, or use an image-text model "
                                    "with `heatmap clip`")


def architecture_problem(model: Any) -> str | None:
    """What no rule of docs/METHODS.md covers in ``model`` (its class, blocks, attention, pooling), or None."""
    kind = type(model).__name__
    if kind in _NOT_COVERED:
        return _NOT_COVERED[kind]
    if not isinstance(model, (VisionTransformer, Eva, NaFlexVit)):
        return (f"{kind} is not a timm ViT (VisionTransformer, Eva or NaFlexVit); vit-heatmap explains ViT-style "
                "models (vit_*, deit_*, eva02_*, ...)")
    problem = next(filter(None, (block_problem(index, block) for index, block in enumerate(model.blocks))), None)
    if problem:
        return problem
    pool = model.global_pool
    if pool not in SUPPORTED_POOLS or (pool == "map") != (getattr(model, "attn_pool", None) is not None):
        return (f"pooling {pool!r} has no query row; models that pool by class token, by mean or with an "
                "attention-pool head are explained")
    if pool == "token" and int(model.num_prefix_tokens) == 0:
        return "token pooling without a prefix token (it would pool a patch) is not supported"
    if pool == "map":
        problem = pool_head_problem(model.attn_pool)
        if problem:
            return problem
    return None


def block_problem(index: int, block: Any) -> str | None:
    """What no rule covers in block ``index``, or an attention whose probabilities cannot be recorded; or None."""
    attention = getattr(block, "attn", None)
    if attention is None:
        return (f"block {index} is a {type(block).__name__}: attention in parallel branches of one block "
                "(timm's parallel blocks) is not covered by any rule")
    if type(attention).__name__ in _NOT_COVERED:
        return _NOT_COVERED[type(attention).__name__]
    if not (hasattr(attention, "fused_attn") and isinstance(getattr(attention, "attn_drop", None), nn.Module)):
        return (f"block {index} uses {type(attention).__name__}, an attention implementation vit-heatmap does not "
                "know; no attention map can be made")
    return None


# Parts no rule of docs/METHODS.md covers ("Modern ViT parts", last item), by class name.
_NOT_COVERED = {
    "Beit": "relative-position bias (BEiT) is not covered by any rule",
    "SwinTransformer": "window attention (Swin) is not covered by any rule",
    "SwinTransformerV2": "window attention (Swin) is not covered by any rule",
    "SwinTransformerV2Cr": "window attention (Swin) is not covered by any rule",
    "DiffAttention": "differential attention is not covered by any rule",
}


class TimmAdapter(ClassifierBase):
    """A timm ViT classifier seen through the seams the driver uses.

    Args:
        model: a ``VisionTransformer``, ``Eva`` or ``NaFlexVit`` (or subclass), put in eval mode here.
        name: how the user named it (for messages and the manifest).
        labels: class names by index, or None.

    Raises:
        UnsupportedModelError: for a model with a part no rule covers (its pooling, blocks, attention).
    """

    def __init__(self, model: Any, name: str, labels: Sequence[str] | None = None) -> None:
        check_architecture(model, name)
        check_has_head(model, name)
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
