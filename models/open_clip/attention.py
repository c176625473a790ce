"""``nn.MultiheadAttention`` made explicit, so that its probabilities are a tensor.

open_clip's blocks call ``nn.MultiheadAttention`` with ``need_weights=False``
(and a fused kernel in eval mode), so its probabilities never exist. For the
duration of a capture, each module's ``forward`` is replaced by the same
attention computed explicitly with the module's own weights, and restored on
exit, also on error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from heatmap.models.capture import AttentionRecorder
from heatmap.models.multihead_attention import check_plain_multihead_attention, explicit_forward


def token_layout(batch_first: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """Tokens as ``[B, N, D]`` from a module that is batch-first or not (``[N, B, D]``)."""
    return (lambda tensor: tensor) if batch_first else (lambda tensor: tensor.transpose(0, 1))


@contextmanager
def multihead_attention_capture(modules: Sequence[nn.Module], track_from: int | None,
                                name: str) -> Iterator[AttentionRecorder]:
    """Record each module's probabilities during a forward pass (see the module docstring)."""
    recorder = AttentionRecorder(len(modules), track_from, name)
    for index, module in enumerate(modules):
        check_plain_multihead_attention(module, f"{name}: block {index}")
    replaced: list[nn.Module] = []
    try:
        for index, module in enumerate(modules):
            assert isinstance(module, nn.MultiheadAttention)  # checked above
            module.forward = explicit_forward(module, functools.partial(recorder.record, index))  # type: ignore[method-assign]
            replaced.append(module)
        yield recorder
    finally:
        for module in replaced:
            del module.forward
