"""The capture machinery every adapter shares: no library here, only torch hooks.

- :class:`AttentionRecorder`: where an adapter's attention instrumentation
  puts each block's probabilities; the start block becomes a leaf of the
  graph so that gradients stop there.
- :class:`ActivationCapture`: forward hooks that record the activations the
  LRP rules read, during the one forward pass being explained.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from typing import overload

import torch
import torch.nn.functional as F
from torch import nn

from heatmap.errors import UnsupportedModelError
from heatmap.models.protocols import Activations, BlockActivations, EmbeddingActivations, HeadActivations


class AttentionRecorder:
    """Each block's attention probabilities, recorded during one forward pass.

    Args:
        num_blocks: the tower's blocks.
        track_from: the first block whose probabilities get gradients, or None.
        name: the model's name, for messages.
    """

    def __init__(self, num_blocks: int, track_from: int | None, name: str) -> None:
        self.track_from = track_from
        self.name = name
        self._probs: list[torch.Tensor | None] = [None] * num_blocks
        self._outputs: list[torch.Tensor | None] = [None] * num_blocks

    def record(self, index: int, probs: torch.Tensor) -> torch.Tensor:
        """Keep block ``index``'s probabilities; return the tensor the forward pass goes on with."""
        if self.track_from is not None and index == self.track_from and torch.is_grad_enabled():
            # The start block becomes a leaf of the graph: blocks before it
            # are never differentiated, blocks after it depend on it.
            probs = probs.detach().requires_grad_(True)
        self._probs[index] = probs
        return probs

    def record_output(self, index: int, tokens: torch.Tensor) -> None:
        """Keep block ``index``'s output tokens ``[B, N, D]`` (in the graph) when it is tracked."""
        if self.track_from is not None and index >= self.track_from:
            self._outputs[index] = tokens

    @property
    def block_outputs(self) -> list[torch.Tensor]:
        """The output tokens of blocks ``track_from..L-1``, in the graph (a block read-out differentiates them)."""
        return self._from_track(self._outputs, "no block outputs were kept")

    def _from_track(self, kept: list[torch.Tensor | None], nothing: str) -> list[torch.Tensor]:
        """``kept``'s tensors of blocks ``track_from..L-1``; raises when the capture tracked nothing or a block
        is missing (``nothing``: what the first error says was not kept)."""
        if self.track_from is None:
            raise RuntimeError(f"the capture was opened without track_from; {nothing}")
        tensors = kept[self.track_from:]
        if any(tensor is None for tensor in tensors):
            raise UnsupportedModelError(f"{self.name}: the forward pass did not run through every block")
        return [tensor for tensor in tensors if tensor is not None]

    @property
    def attention_probs(self) -> list[torch.Tensor]:
        """Each block's probabilities ``[B, H, N, N]``; raises if any is missing."""
        missing = [index for index, probs in enumerate(self._probs) if probs is None]
        if missing:
            raise UnsupportedModelError(
                f"{self.name}: captured no attention probabilities from block(s) {missing}; its attention "
                "implementation does not expose them, so no attention-based map can be made for this model")
        return [probs for probs in self._probs if probs is not None]

    fused = False  # eager attention: the probabilities are in the graph

    def tracked(self) -> list[torch.Tensor]:
        """The probabilities of blocks ``track_from..L-1``, which the gradients are taken for."""
        if self.track_from is None:
            raise RuntimeError("the capture was opened without track_from; no gradients were tracked")
        return self.attention_probs[self.track_from:]

    def probability_gradient(self, position: int, grad: torch.Tensor, items: slice = slice(None)) -> torch.Tensor:
        """``dA_l`` from the gradient of ``tracked()[position]`` (of ``items``): the gradient itself (it is of
        ``A_l``)."""
        return grad

    def tracked_blocks(self) -> list[torch.Tensor]:
        """The tracked probabilities of the blocks that have output tokens (:attr:`block_outputs`), in order: every
        layer here; not an attention-pool head's (:class:`heatmap.models.attention_pool.PooledRecorder`)."""
        return self.tracked()[: max(len(self._outputs) - (self.track_from or 0), 0)]


# PyTorch's own kernel, kept before any capture replaces the function modules call (timm's fused path)
_SCALED_DOT_PRODUCT_ATTENTION = F.scaled_dot_product_attention


def softmax_attention(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    """``softmax((q * scale) k^T + bias)`` ``[B, H, N, S]``, q scaled before the product as the eager paths do."""
    scores = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    return scores.softmax(dim=-1)


class FusedRecorder(AttentionRecorder):
    """An :class:`AttentionRecorder` for blocks that keep their fused attention kernel.

    A block's attention goes through :meth:`attend`: the output comes from
    PyTorch's fused kernel, and the block's q and k (after its q/k norms and
    rotary embedding), its scale and its mask are kept, ``[B, H, N, d]``
    each, not the ``[B, H, N, N]`` probabilities: :attr:`attention_probs`
    computes each block's again from them, outside the graph, when it is
    read, so a method that reads them block by block holds one block's at a
    time. The gradients are taken of each tracked block's attention output
    ``O = A V``, and ``dA = dO V^T`` (:meth:`probability_gradient`): what the
    eager graph gives, to float round-off, without forming ``A`` in the model's
    forward or backward pass.
    """

    fused = True

    def __init__(self, num_blocks: int, track_from: int | None, name: str) -> None:
        super().__init__(num_blocks, track_from, name)
        self._inputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float] | None] = [None] * num_blocks
        self._values: list[torch.Tensor | None] = [None] * num_blocks
        self._attended: list[torch.Tensor | None] = [None] * num_blocks

    def attend(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
               scale: float) -> torch.Tensor:
        """Block ``index``'s attention output ``[B, H, N, d]`` (``bias``: additive, or None); what its
        probabilities are computed from is kept."""
        mask = None if bias is None else bias.to(q.dtype)
        output: torch.Tensor = _SCALED_DOT_PRODUCT_ATTENTION(q, k, v, attn_mask=mask, scale=scale)
        self._inputs[index] = (q.detach(), k.detach(), None if bias is None else bias.detach(), scale)
        if self.track_from is not None and index >= self.track_from and torch.is_grad_enabled():
            if index == self.track_from:  # the start block's output is a leaf: no gradient flows before it
                output = output.detach().requires_grad_(True)
            self._values[index] = v.detach()
            self._attended[index] = output
        return output

    @property
    def attention_probs(self) -> Sequence[torch.Tensor]:  # type: ignore[override]
        """Each block's probabilities ``[B, H, N, N]``, computed when read (no grad); raises if any is missing."""
        missing = [index for index, inputs in enumerate(self._inputs) if inputs is None]
        if missing:
            raise UnsupportedModelError(
                f"{self.name}: captured no attention from block(s) {missing}; its attention implementation does "
                "not expose it, so no attention-based map can be made for this model")
        return RecomputedProbabilities(self, range(len(self._inputs)))

    def probabilities(self, index: int, items: slice = slice(None)) -> torch.Tensor:
        """Block ``index``'s probabilities (of ``items`` of the batch), computed from its q and k (no grad)."""
        inputs = self._inputs[index]
        assert inputs is not None
        q, k, bias, scale = inputs
        if bias is not None and bias.dim() == 4 and bias.shape[0] == q.shape[0]:
            bias = bias[items]  # a per-item mask (else it broadcasts over the batch)
        with torch.no_grad():
            return softmax_attention(q[items], k[items], bias, scale)

    def tracked(self) -> list[torch.Tensor]:
        """The attention outputs of blocks ``track_from..L-1``, which the gradients are taken for."""
        return self._from_track(self._attended, "no gradients were tracked")

    def probability_gradient(self, position: int, grad: torch.Tensor, items: slice = slice(None)) -> torch.Tensor:
        """``dA_l = dO_l V_l^T``: ``O_l = A_l V_l`` is the only use of ``A_l`` (``grad``: of ``items``)."""
        assert self.track_from is not None
        values = self._values[self.track_from + position]
        assert values is not None
        return grad @ values[items].transpose(-2, -1).to(grad.dtype)


class RecomputedProbabilities(Sequence[torch.Tensor]):
    """A :class:`FusedRecorder`'s blocks' probabilities as a sequence, each computed when it is read."""

    def __init__(self, recorder: FusedRecorder, blocks: range) -> None:
        self._recorder = recorder
        self._blocks = blocks

    def __len__(self) -> int:
        return len(self._blocks)

    @overload
    def __getitem__(self, item: int) -> torch.Tensor: ...

    @overload
    def __getitem__(self, item: slice) -> RecomputedProbabilities: ...

    def __getitem__(self, item: int | slice) -> torch.Tensor | RecomputedProbabilities:
        if isinstance(item, slice):
            return RecomputedProbabilities(self._recorder, self._blocks[item])
        return self._recorder.probabilities(self._blocks[item])

    def of_items(self, position: int, items: slice) -> torch.Tensor:
        """The ``position``-th block's probabilities of ``items`` of the batch alone."""
        return self._recorder.probabilities(self._blocks[position], items)


def additive_bias(mask: torch.Tensor | None, keep_is_true: bool, dtype: torch.dtype) -> torch.Tensor | None:
    """An attention mask as an additive bias (0 where attended, -inf where not): a boolean mask (``keep_is_true``:
    True = attend, as SDPA and transformers read it; else True = masked, as ``nn.MultiheadAttention``) or a float
    one, which is a bias already."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    masked = ~mask if keep_is_true else mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(masked, float("-inf"))


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
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._block_slots: list[Slot] = []
        self._head_slot: Slot = {}
        self._embedding_slot: Slot = {}
        self._activations: Activations | None = None

    def register_block(self, block: nn.Module, slot: Slot) -> None:
        raise NotImplementedError

    def register_head(self, slot: Slot) -> None:
        raise NotImplementedError

    def head_activations(self, slot: Slot, last_block: BlockActivations) -> HeadActivations:
        raise NotImplementedError

    def register_embedding(self, slot: Slot) -> None:
        """Record what :class:`EmbeddingActivations` holds (a model with a patch embedding the rules cover)."""

    def embedding_activations(self, slot: Slot) -> EmbeddingActivations | None:
        return None

    def __enter__(self) -> ActivationCapture:
        self._block_slots = [{} for _ in self.blocks[self.first_block:]]
        self._head_slot = {}
        self._embedding_slot = {}
        self._activations = None
        try:
            for slot, block in zip(self._block_slots, self.blocks[self.first_block:], strict=False):
                self.register_block(block, slot)
            self.register_head(self._head_slot)
            if self.first_block == 0:  # below the first block only a pass through every block goes
                self.register_embedding(self._embedding_slot)
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._remove()

    def activations(self) -> Activations:
        """The recorded activations (built once: every target's pass reads the same); raises if the
        forward pass did not run through every hook."""
        if self._activations is not None:
            return self._activations
        names = {f.name for f in fields(BlockActivations)}
        if any(set(slot) != names for slot in self._block_slots):
            raise UnsupportedModelError(f"{self.name}: the forward pass did not run through every layer that "
                               "transformer-attribution records; no map can be made for this model")
        blocks = [BlockActivations(**slot) for slot in self._block_slots]
        self._activations = Activations(self.first_block, blocks, self.head_activations(self._head_slot, blocks[-1]),
                                        self.embedding_activations(self._embedding_slot))
        return self._activations

    def hook(self, module: nn.Module, slot: Slot, inputs: str | None = None, output: str | None = None,
             layout: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor) -> None:
        """Record ``module``'s first input and/or its output into ``slot``, through ``layout``."""
        def record(_module: nn.Module, args: tuple[torch.Tensor, ...], result: torch.Tensor) -> None:
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


@contextmanager
def replaced_forward(module: nn.Module, forward: Callable[..., object]) -> Iterator[None]:
    """Within: ``module`` runs ``forward``; on exit, also on error, the instance gets back whatever ``forward`` it
    had (none: the class's). For modules whose probabilities no hook can reach."""
    previous = vars(module).get("forward")
    # the instance's forward is replaced on purpose, and given back below: mypy forbids assigning a method
    module.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        if previous is None:
            del module.forward
        else:
            module.forward = previous  # type: ignore[method-assign]
