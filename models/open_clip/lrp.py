"""The LRP view of an open_clip tower (see :class:`heatmap.models.protocols.LrpView`).

Both towers are stacks of open_clip's ``ResidualAttentionBlock`` (pre-norm,
``nn.MultiheadAttention``, an MLP ``c_fc -> GELU -> c_proj``, optional layer
scale). The image tower pools the class token (or averages the patches), the
text tower the token :class:`~heatmap.models.open_clip.text.TextPooling` finds;
each then projects (``proj`` / ``text_projection``) to the embedding ``e``
whose cosine with the other tower's embedding, times the logit scale, is the
score. The pass starts there
(docs/METHODS.md: ``R_e = e * (s / ||e||) * t_hat``).

``nn.MultiheadAttention`` keeps its input projection as a bare parameter, so
no hook sees q, k and v: the capture projects the recorded attention input
with the module's own weights, inside the forward pass (the same
numbers the attention probe's explicit path computes).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from heatmap.errors import UnsupportedModelError
from heatmap.models.capture import ActivationCapture, Slot
from heatmap.models.open_clip.attention import token_layout
from heatmap.models.open_clip.text import pooling_problem, text_pooling
from heatmap.models.protocols import (
    BlockActivations,
    BlockWeights,
    EmbeddingActivations,
    HeadActivations,
    LrpView,
    PatchEmbedding,
)

NORMS = (nn.LayerNorm, nn.Identity)


def _activations() -> tuple[type, ...]:
    from open_clip.transformer import QuickGELU
    from timm.layers.activations import GELU
    from timm.layers.activations import QuickGELU as TimmQuickGELU
    return nn.GELU, GELU, QuickGELU, TimmQuickGELU


def _layer_scales() -> tuple[type, ...]:
    from open_clip.transformer import LayerScale
    return LayerScale, nn.Identity


def unsupported_operation(tower: Any, kind: str) -> str | None:
    """The first operation of an open_clip tower the LRP rules do not cover, or None.

    Args:
        tower: the image tower (``model.visual``) or the module that holds the
            text tower (``model`` for ``CLIP``, ``model.text`` for ``CustomTextCLIP``).
        kind: ``"image"`` or ``"text"``.
    """
    from open_clip.transformer import ResidualAttentionBlock

    if kind == "image":
        if getattr(tower, "attn_pool", None) is not None:
            return "the attention-pool image head"
        if getattr(tower, "pool_type", "tok") not in ("tok", "avg"):
            return f"image pooling {tower.pool_type!r}"
        final_norm, projection = tower.ln_post, tower.proj
    else:
        problem = pooling_problem(tower)
        if problem:
            return problem
        final_norm, projection = tower.ln_final, tower.text_projection
    if not isinstance(final_norm, NORMS):
        return f"the {kind} tower's final norm {type(final_norm).__name__}"
    if projection is not None and not isinstance(projection, (nn.Parameter, nn.Linear)):
        return f"the {kind} projection {type(projection).__name__}"
    for index, block in enumerate(tower.transformer.resblocks):
        problem = _unsupported_in_block(block, ResidualAttentionBlock)
        if problem:
            return f"{kind} block {index}: {problem}"
    return None


def patch_embedding_problem(tower: Any, kind: str) -> str | None:
    """Why the pass cannot go on to the pixels of a tower, or None (docs/METHODS.md, full-lrp)."""
    if kind != "image":
        return "the text tower (it has no pixels)"
    conv = tower.conv1
    if type(conv) is not nn.Conv2d:
        return (f"the patch projection conv1 {type(conv).__name__} (a convolutional stem, not one patch "
                "convolution with stride = kernel)")
    if (conv.kernel_size != conv.stride or conv.padding != (0, 0) or conv.dilation != (1, 1)
            or conv.groups != 1 or conv.in_channels != 3):
        return "a patch convolution other than a 3-channel one with stride = kernel and no padding"
    if not isinstance(tower.ln_pre, NORMS):
        return f"ln_pre {type(tower.ln_pre).__name__}"
    return None


def _unsupported_in_block(block: Any, block_type: Any) -> str | None:
    if type(block) is not block_type:
        return f"the block type {type(block).__name__}"
    if hasattr(block, "ln_1_kv"):
        return "cross attention (ln_1_kv)"
    attn = block.attn
    if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim or attn.bias_k is not None:
        return f"the attention {type(attn).__name__} (plain self-attention nn.MultiheadAttention is needed)"
    mlp = block.mlp
    if not isinstance(mlp, nn.Sequential) or list(mlp._modules) != ["c_fc", "gelu", "c_proj"]:
        return "an MLP other than c_fc -> activation -> c_proj"
    checks = [("ln_1", block.ln_1, NORMS), ("ln_2", block.ln_2, NORMS),
              ("ls_1", block.ls_1, _layer_scales()), ("ls_2", block.ls_2, _layer_scales()),
              ("mlp.gelu", mlp.gelu, _activations()),
              ("mlp.c_fc", mlp.c_fc, (nn.Linear,)), ("mlp.c_proj", mlp.c_proj, (nn.Linear,))]
    for where, module, allowed in checks:
        if not isinstance(module, allowed):
            return f"{where} {type(module).__name__}"
    return None


class ClipTowerCapture(ActivationCapture):
    """The activations of one open_clip tower's forward pass.

    Args:
        tower: as for :func:`unsupported_operation`.
        kind: ``"image"`` or ``"text"``.
        first_block: record blocks from this one on.
        name: the model's name, for messages.
    """

    def __init__(self, tower: Any, kind: str, first_block: int = 0, name: str = "model") -> None:
        super().__init__(list(tower.transformer.resblocks), first_block, name)
        self.tower = tower
        self.kind = kind
        # Tokens pass the blocks as [L, B, D] when the transformer is not
        # batch-first (open_clip before 2.24 had no such flag and was not).
        self.layout = token_layout(getattr(tower.transformer, "batch_first", False))

    def register_block(self, block: Any, slot: Slot) -> None:
        layout = self.layout
        self.hook(block.ln_1, slot, inputs="block_input", output="attn_input", layout=layout)
        attn = block.attn
        attn_layout = token_layout(attn.batch_first)

        def record_qkv(_module: nn.Module, args: tuple[torch.Tensor, ...], _result: object) -> None:
            query = attn_layout(args[0].detach())
            bias = attn.in_proj_bias.detach() if attn.in_proj_bias is not None else None
            slot["qkv"] = F.linear(query, attn.in_proj_weight.detach(), bias)

        self._handles.append(attn.register_forward_hook(record_qkv))
        # the probe's explicit attention calls out_proj on batch-first merged heads
        self.hook(attn.out_proj, slot, inputs="proj_input")
        self.hook(block.ls_1, slot, output="attn_branch", layout=layout)
        self.hook(block.ln_2, slot, inputs="mid", output="mlp_input", layout=layout)
        self.hook(block.mlp.c_proj, slot, inputs="fc2_input", layout=layout)
        self.hook(block.ls_2, slot, output="mlp_branch", layout=layout)

    def register_head(self, slot: Slot) -> None:
        if self.kind == "image":
            self.hook(self.tower.ln_post, slot, output="normed")
        else:
            self.hook(self.tower.ln_final, slot, output="normed")
            self.hook(self.tower.token_embedding, slot, inputs="text")  # the token ids, to find the pooled token

    def register_embedding(self, slot: Slot) -> None:
        if patch_embedding_problem(self.tower, self.kind) is not None:
            return
        self.hook(self.tower.conv1, slot, inputs="image")
        # [B, D, gh, gw] -> [B, G, D], row-major, as the tower flattens it
        self.hook(self.tower.conv1, slot, output="patches", layout=lambda grid: grid.flatten(2).transpose(1, 2))
        # after the class and position embeddings (patch dropout: identity in eval mode); ln_pre
        # runs before the tokens are laid out for the blocks, so batch-first
        self.hook(self.tower.ln_pre, slot, inputs="embedded")

    def embedding_activations(self, slot: Slot) -> EmbeddingActivations | None:
        return EmbeddingActivations(**slot) if len(slot) == 3 else None

    def head_activations(self, slot: Slot, last_block: BlockActivations) -> HeadActivations:
        if "normed" not in slot:
            raise UnsupportedModelError(f"{self.name}: the forward pass did not reach the {self.kind} tower's "
                                        "final norm; no map can be made")
        normed = slot["normed"]
        batch = len(normed)
        if self.kind == "text":
            token_index = text_pooling(self.tower).positions(slot["text"].long()).cpu()
            pooled = normed[torch.arange(batch), token_index.to(normed.device)]
            return HeadActivations(pooled, self._project(pooled), token_index=token_index, selected=pooled)
        if self.tower.pool_type == "tok":
            # ln_post before the pooling (open_clip's default) or after it; the
            # class token is selected from ln_post's output or the last block's
            norm_first = normed.dim() == 3
            pooled = normed[:, 0] if norm_first else normed
            selected = pooled if norm_first else last_block.output[:, 0]
            return HeadActivations(pooled, self._project(pooled), token_index=torch.zeros(batch, dtype=torch.long),
                                   selected=selected)
        # mean of the patch tokens (ln_post before or after the mean: identity either way)
        tokens = normed if normed.dim() == 3 else last_block.output
        pooled = normed[:, 1:].mean(dim=1) if normed.dim() == 3 else normed
        return HeadActivations(pooled, self._project(pooled), pooled_tokens=tokens[:, 1:], pooled_from=1)

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        projection = self.tower.proj if self.kind == "image" else self.tower.text_projection
        if projection is None:
            return pooled
        if isinstance(projection, nn.Linear):
            bias = projection.bias.detach() if projection.bias is not None else None
            return F.linear(pooled, projection.weight.detach(), bias)
        projected: torch.Tensor = pooled @ projection.detach()
        return projected


def projection_weight(tower: Any, kind: str) -> torch.Tensor | None:
    """The projection as a Linear weight ``[E, D]`` (open_clip keeps most as a ``[D, E]`` matrix)."""
    projection = tower.proj if kind == "image" else tower.text_projection
    if projection is None:
        return None
    return projection.weight if isinstance(projection, nn.Linear) else projection.t()


def clip_lrp_view(tower: Any, kind: str, name: str) -> LrpView:
    """The LRP view of one tower; raises :class:`UnsupportedModelError` for an unsupported structure."""
    problem = unsupported_operation(tower, kind)
    if problem:
        raise UnsupportedModelError(f"{name}: {problem} is not covered by the LRP rules")
    blocks = []
    for block in tower.transformer.resblocks:
        attn = block.attn
        blocks.append(BlockWeights(attn.in_proj_weight, attn.out_proj.weight, block.mlp.c_fc.weight,
                                   block.mlp.c_proj.weight, attn.num_heads))
    pooling: Literal["token", "mean"] = "mean" if kind == "image" and tower.pool_type == "avg" else "token"
    problem = patch_embedding_problem(tower, kind)
    embedding = None if problem else PatchEmbedding(tower.conv1.weight, tuple(tower.conv1.stride))
    return LrpView(blocks, projection_weight(tower, kind), pooling, start="embedding",
                   capture=lambda first_block: ClipTowerCapture(tower, kind, first_block, name),
                   embedding=embedding, embedding_problem=problem)
