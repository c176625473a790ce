"""An attention-pool head explained as one more attention layer (docs/METHODS.md, "Modern ViT parts").

SigLIP's "MAP" head, timm's ``AttentionPoolLatent`` and the same head in
open_clip's timm towers have no class token: a learned probe attends to the
last block's tokens. The contract makes the probe a token of its own, put
first (``N' = N + 1``), and the head the layer ``l = L``:

- every block's ``[B, H, N, N]`` is padded with a zero row and column 0, so
  the probe passes each block unchanged (:func:`padded_block`);
- the head's probabilities ``[B, H, Q, N]`` (Q probes; for a model that pools
  without its prefix tokens, the patches' columns only) become row 0 of an
  ``[B, H, N', N']`` layer, the mean over the probes, every other row 0
  (:func:`head_layer`); its gradient is the same mean of the gradients with
  respect to the head's probabilities.

This module is the one implementation of that rule; each library's adapter
only says where its blocks' and its head's probabilities come from
(:class:`PooledRecorder`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from heatmap.models.capture import AttentionRecorder


def padded_block(probs: torch.Tensor) -> torch.Tensor:
    """A block's ``[B, H, N, N]`` -> ``[B, H, N+1, N+1]`` with the probe's row and column 0."""
    return F.pad(probs, (1, 0, 1, 0))


def head_layer(probs: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The head's ``[B, H, Q, K]`` -> ``[B, H, N+1, N+1]``: row 0 = the mean over the Q probes, other rows 0.

    The head attends to the last ``K`` of the ``N`` tokens (all of them, or
    the patches alone for a model that pools without its prefix tokens).
    """
    row = F.pad(probs.mean(dim=2, keepdim=True), (1 + num_tokens - probs.shape[-1], 0))  # [B, H, 1, N+1]
    return F.pad(row, (0, 0, 0, num_tokens))


class _HeadTap(torch.autograd.Function):
    """Passes the head's probabilities on unchanged and gives the recorded layer their gradient, laid out as the
    layer (the mean over the probes in row 0): the model's own graph is untouched, whatever the number of probes."""

    @staticmethod
    def forward(ctx: Any, probs: torch.Tensor, layer: torch.Tensor) -> torch.Tensor:
        ctx.num_tokens = layer.shape[-1] - 1
        return probs.view_as(probs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return grad, head_layer(grad, ctx.num_tokens)


class PooledRecorder(AttentionRecorder):
    """An :class:`AttentionRecorder` over ``L`` blocks and an attention-pool head, the layer ``L``.

    Block ``l``'s probabilities go through :meth:`record` (padded here), the
    head's through :meth:`record_head`. Only the first call of the head in a
    capture is the model's forward pass; later calls (LeGrad reading a block's
    output through the head) pass through unrecorded.

    Args:
        num_blocks: the tower's blocks, the head not counted.
        track_from: the first layer whose probabilities get gradients (``L`` = the head alone), or None.
        name: the model's name, for messages.
    """

    def __init__(self, num_blocks: int, track_from: int | None, name: str) -> None:
        super().__init__(num_blocks + 1, track_from, name)
        self._outputs = [None] * num_blocks  # the blocks have output tokens; the head, the last layer, has none
        self.num_real_blocks = num_blocks
        self._num_tokens = 0
        self._head_recorded = False

    def record(self, index: int, probs: torch.Tensor) -> torch.Tensor:
        """Keep block ``index``'s probabilities padded for the probe; return the block's own ``[B, H, N, N]``."""
        self._num_tokens = probs.shape[-1]
        return super().record(index, padded_block(probs))[..., 1:, 1:]

    def record_head(self, probs: torch.Tensor) -> torch.Tensor:
        """Keep the head's ``[B, H, Q, N]`` as the layer ``L``; return what the head goes on with."""
        if self._head_recorded:
            return probs
        self._head_recorded = True
        index = self.num_real_blocks
        layer = head_layer(probs.detach(), self._num_tokens)
        tracked = self.track_from is not None and index >= self.track_from and torch.is_grad_enabled()
        if not tracked:
            super().record(index, layer)
            return probs
        kept = super().record(index, layer.requires_grad_(True))
        passed: torch.Tensor = _HeadTap.apply(probs, kept)
        return passed
