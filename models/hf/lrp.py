"""The LRP view of a transformers tower (see :class:`heatmap.models.protocols.LrpView`).

The blocks come from the traced layer parts (:mod:`heatmap.models.hf.structure`):
q, k and v are separate Linears, so the view's ``qkv`` weight is theirs
stacked in that order, and the capture records their three outputs side by
side, as one qkv Linear would have computed them. The top (pooling, heads)
and the bottom (patch embedding) come from the tower's family.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from heatmap.errors import UnsupportedModelError
from heatmap.models.capture import ActivationCapture, Slot
from heatmap.models.hf.structure import GELU_ACTIVATIONS, LayerParts
from heatmap.models.protocols import (
    BlockActivations,
    BlockWeights,
    EmbeddingActivations,
    HeadActivations,
    LrpView,
    PatchEmbedding,
)

if TYPE_CHECKING:
    from heatmap.models.hf.tower import HfTower


class HfCapture(ActivationCapture):
    """The activations of one transformers tower's forward pass."""

    def __init__(self, tower: HfTower, first_block: int = 0) -> None:
        super().__init__(list(tower.layers), first_block, tower.name)
        self.tower = tower
        self.parts = {id(layer): parts for layer, parts in zip(tower.layers, tower.parts(), strict=True)}

    def register_block(self, block: nn.Module, slot: Slot) -> None:
        parts: LayerParts = self.parts[id(block)]
        self.hook(parts.attention_norm, slot, inputs="block_input", output="attn_input")
        projections: dict[str, torch.Tensor] = {}

        def record_projection(role: str) -> Any:
            def record(_module: nn.Module, _args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
                projections[role] = output.detach()
                if len(projections) == 3:  # q, k, v side by side, as one qkv Linear computes them
                    slot["qkv"] = torch.cat([projections["q"], projections["k"], projections["v"]], dim=-1)
                    projections.clear()
            return record

        for role, module in (("q", parts.q), ("k", parts.k), ("v", parts.v)):
            self._handles.append(module.register_forward_hook(record_projection(role)))
        # the output projection's output is the branch the first residual adds (dropout: identity in eval
        # mode; the trace checked mid = x + out)
        self.hook(parts.out, slot, inputs="proj_input", output="attn_branch")
        self.hook(parts.mlp_norm, slot, inputs="mid", output="mlp_input")
        self.hook(parts.fc2, slot, inputs="fc2_input", output="mlp_branch")

    def register_head(self, slot: Slot) -> None:
        self.tower.register_lrp_head(self, slot)

    def head_activations(self, slot: Slot, last_block: BlockActivations) -> HeadActivations:
        return self.tower.lrp_head_activations(slot, last_block)

    def register_embedding(self, slot: Slot) -> None:
        if self.tower.patch_embedding()[0] is not None:
            self.tower.register_lrp_embedding(self, slot)

    def embedding_activations(self, slot: Slot) -> EmbeddingActivations | None:
        return EmbeddingActivations(**slot) if len(slot) == 3 else None


def patch_convolution_problem(conv: nn.Module | None) -> str | None:
    """Why ``conv`` is not the one stride = kernel patch convolution the pixel rule covers, or None."""
    if type(conv) is not nn.Conv2d:
        return f"the patch embedding {type(conv).__name__} (one patch convolution is needed)"
    if (conv.kernel_size != conv.stride or conv.padding != (0, 0) or conv.dilation != (1, 1)
            or conv.groups != 1 or conv.in_channels != 3):
        return "a patch convolution other than a 3-channel one with stride = kernel and no padding"
    return None


def hf_lrp_view(tower: HfTower) -> LrpView:
    """The LRP view of ``tower``; raises :class:`UnsupportedModelError` naming what the rules do not cover."""
    problem = tower.lrp_problem()
    activation = str(getattr(tower.config, "hidden_act", ""))
    if problem is None and activation not in GELU_ACTIVATIONS:
        problem = f"the MLP activation {activation!r} (GELU or QuickGELU is needed)"
    if problem:
        raise UnsupportedModelError(f"{tower.name}: {problem} is not covered by the LRP rules")
    blocks = [BlockWeights(torch.cat([parts.q.weight, parts.k.weight, parts.v.weight]), parts.out.weight,
                           parts.fc1.weight, parts.fc2.weight, parts.num_heads) for parts in tower.parts()]
    conv, embedding_problem = tower.patch_embedding()
    embedding = None if conv is None else PatchEmbedding(conv.weight, (int(conv.stride[0]), int(conv.stride[1])))
    return LrpView(blocks, tower.head_weight(), "token", start=tower.lrp_start,
                   capture=lambda first_block: HfCapture(tower, first_block),
                   embedding=embedding, embedding_problem=embedding_problem)
