"""The structural view of a model that the LRP pass of transformer-attribution reads.

The pass itself (:mod:`heatmap.explainers.lrp`) knows only pre-norm blocks,
a pooling and a final Linear; each adapter says where those are in its
models (:mod:`heatmap.models.timm_lrp`, :mod:`heatmap.models.clip_lrp`):

- :class:`BlockWeights`: the four Linear weights and the head layout of a block;
- :class:`ActivationCapture`: forward hooks that record, during the one
  forward pass being explained, the activations the rules read (detached,
  in the model's dtype, nothing else);
- :class:`LrpView`: both, plus how the output pools and where the relevance starts.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch
from torch import nn

from heatmap.errors import HeatmapError


@dataclass
class BlockWeights:
    """One pre-norm block's Linear weights (``[out, in]``, the model's own tensors) and head layout."""

    qkv: torch.Tensor  # [3 D', D]: q, k, v of all heads
    proj: torch.Tensor  # [D, D']
    fc1: torch.Tensor  # [M, D]
    fc2: torch.Tensor  # [D, M]
    num_heads: int


@dataclass
class BlockActivations:
    """What the rules read in one block, as the forward pass computed it (in the model's dtype).

    Shapes: ``[B, N, D]`` unless noted; ``D'`` is the attention width, ``M`` the MLP width.
    """

    block_input: torch.Tensor  # x: the skip operand of the first residual add
    attn_input: torch.Tensor  # norm1(x): the input of the qkv projection
    qkv: torch.Tensor  # [B, N, 3 D'], q k v of all heads (unscaled)
    proj_input: torch.Tensor  # [B, N, D'], the merged heads A V
    attn_branch: torch.Tensor  # the branch operand of the first add
    mid: torch.Tensor  # x after the first add: the skip operand of the second
    mlp_input: torch.Tensor  # norm2(mid): the input of fc1
    fc2_input: torch.Tensor  # [B, N, M]
    mlp_branch: torch.Tensor  # the branch operand of the second add

    @property
    def output(self) -> torch.Tensor:
        """The block's output tokens (the second add)."""
        return self.mid + self.mlp_branch


@dataclass
class HeadActivations:
    """The top of the network: pooling and the final Linear.

    Attributes:
        pooled: ``[B, D]``, the input of the final Linear.
        output: ``[B, C]``, its output (logits, or the CLIP embedding), bias included.
        token_index: token pooling: ``[B]``, the pooled token of each item.
        selected: token pooling: ``[B, D]``, that token's value where it is
            selected (the input of the authors' ``IndexSelect`` rule).
        pooled_tokens: mean pooling: ``[B, N', D]``, the averaged tokens.
        pooled_from: mean pooling: the position of the first averaged token.
    """

    pooled: torch.Tensor
    output: torch.Tensor
    token_index: torch.Tensor | None = None
    selected: torch.Tensor | None = None
    pooled_tokens: torch.Tensor | None = None
    pooled_from: int = 0


@dataclass
class Activations:
    """Everything the LRP pass reads, from one forward pass.

    Attributes:
        first_block: the lowest block recorded; the pass stops at its input.
        blocks: per block from ``first_block`` on.
        head: the pooling and the final Linear.
    """

    first_block: int
    blocks: list[BlockActivations]
    head: HeadActivations


Slot = dict[str, torch.Tensor]


class ActivationCapture:
    """Records, during one forward pass, the activations the LRP rules read.

    Use it around the same forward pass that the attention probe records.
    A subclass names the modules: :meth:`register_block` for each recorded
    block, :meth:`register_head` and :meth:`head_activations` for the top.

    Args:
        blocks: every block of the network, in forward order.
        first_block: record blocks from this one on (the start layer: the
            pass never needs anything below it).
        name: the model's name, for messages.
    """

    def __init__(self, blocks: list[nn.Module], first_block: int, name: str) -> None:
        self.blocks = list(blocks)
        self.first_block = first_block
        self.name = name
        self._handles: list = []
        self._block_slots: list[Slot] = []
        self._head_slot: Slot = {}
        self._activations: Activations | None = None

    def register_block(self, block: nn.Module, slot: Slot) -> None:
        raise NotImplementedError

    def register_head(self, slot: Slot) -> None:
        raise NotImplementedError

    def head_activations(self, slot: Slot, last_block: BlockActivations) -> HeadActivations:
        raise NotImplementedError

    def __enter__(self) -> "ActivationCapture":
        self._block_slots = [{} for _ in self.blocks[self.first_block:]]
        self._head_slot = {}
        self._activations = None
        try:
            for slot, block in zip(self._block_slots, self.blocks[self.first_block:]):
                self.register_block(block, slot)
            self.register_head(self._head_slot)
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._remove()

    def activations(self) -> Activations:
        """The recorded activations (built once: every target's pass reads the same); raises if the
        forward pass did not run through every hook."""
        if self._activations is not None:
            return self._activations
        names = {f.name for f in fields(BlockActivations)}
        if any(set(slot) != names for slot in self._block_slots):
            raise HeatmapError(f"{self.name}: the forward pass did not run through every layer that "
                               "transformer-attribution records; no map can be made for this model")
        blocks = [BlockActivations(**slot) for slot in self._block_slots]
        self._activations = Activations(self.first_block, blocks, self.head_activations(self._head_slot, blocks[-1]))
        return self._activations

    def hook(self, module: nn.Module, slot: Slot, inputs: str | None = None, output: str | None = None,
             layout: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor) -> None:
        """Record ``module``'s first input and/or its output into ``slot``, through ``layout``."""
        def record(_module, args, result):
            # detach: the pass reads values only, in the dtype the model computes in
            if inputs:
                slot[inputs] = layout(args[0].detach())
            if output:
                slot[output] = layout(result.detach())

        self._handles.append(module.register_forward_hook(record))

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@dataclass
class LrpView:
    """A model as the LRP pass sees it.

    Attributes:
        blocks: every block's weights, in forward order.
        head_weight: the final Linear's weight ``[C, D]`` (classifier head, or
            CLIP's projection), None when there is none (identity).
        pooling: ``"token"`` (one token per item) or ``"mean"`` (z-rule over the averaged tokens).
        start: ``"logit"``: the one-hot of the target class (docs/METHODS.md);
            ``"embedding"``: CLIP's ``R_e = e * (s / ||e||) * t_hat``.
        capture: ``first_block -> ActivationCapture`` for this model.
    """

    blocks: list[BlockWeights]
    head_weight: torch.Tensor | None
    pooling: str
    start: str
    capture: Callable[[int], ActivationCapture]
