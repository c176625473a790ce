"""The capture machinery every adapter shares: no library here, only torch hooks.

- :class:`AttentionRecorder`: where an adapter's attention instrumentation
  puts each block's probabilities; the start block becomes a leaf of the
  graph so that gradients stop there.
- :class:`ActivationCapture`: forward hooks that record the activations the
  LRP rules read, during the one forward pass being explained.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields

import torch
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
        if self.track_from is None:
            raise RuntimeError("the capture was opened without track_from; no block outputs were kept")
        outputs = self._outputs[self.track_from:]
        if any(tokens is None for tokens in outputs):
            raise UnsupportedModelError(f"{self.name}: the forward pass did not run through every block")
        return [tokens for tokens in outputs if tokens is not None]

    @property
    def attention_probs(self) -> list[torch.Tensor]:
        """Each block's probabilities ``[B, H, N, N]``; raises if any is missing."""
        missing = [index for index, probs in enumerate(self._probs) if probs is None]
        if missing:
            raise UnsupportedModelError(
                f"{self.name}: captured no attention probabilities from block(s) {missing}; its attention "
                "implementation does not expose them, so no attention-based map can be made for this model")
        return [probs for probs in self._probs if probs is not None]

    def tracked(self) -> list[torch.Tensor]:
        """The probabilities of blocks ``track_from..L-1``, which the gradients are taken for."""
        if self.track_from is None:
            raise RuntimeError("the capture was opened without track_from; no gradients were tracked")
        return self.attention_probs[self.track_from:]

    def tracked_blocks(self) -> list[torch.Tensor]:
        """The tracked probabilities of the blocks that have output tokens (:attr:`block_outputs`), in order: every
        layer here; not an attention-pool head's (:class:`heatmap.models.attention_pool.PooledRecorder`)."""
        return self.tracked()[: max(len(self._outputs) - (self.track_from or 0), 0)]


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
