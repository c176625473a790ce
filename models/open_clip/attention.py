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
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from heatmap.models.capture import AttentionRecorder, FusedRecorder
from heatmap.models.multihead_attention import check_plain_multihead_attention, explicit_attention


def token_layout(batch_first: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """Tokens as ``[B, N, D]`` from a module that is batch-first or not (``[N, B, D]``)."""
    return (lambda tensor: tensor) if batch_first else (lambda tensor: tensor.transpose(0, 1))


@contextmanager
def multihead_attention_capture(modules: Sequence[nn.Module], track_from: int | None, name: str,
                                fused: bool = False) -> Iterator[AttentionRecorder]:
    """Record each module's probabilities during a forward pass (see the module docstring); ``fused``: the
    attention from PyTorch's fused kernel, the probabilities recomputed beside it (``FusedRecorder``)."""
    recorder = FusedRecorder(len(modules), track_from, name) if fused else AttentionRecorder(
        len(modules), track_from, name)
    for index, module in enumerate(modules):
        check_plain_multihead_attention(module, f"{name}: block {index}")
    with ExitStack() as stack:
        for index, module in enumerate(modules):
            assert isinstance(module, nn.MultiheadAttention)  # checked above
            attend = (functools.partial(recorder.attend, index) if isinstance(recorder, FusedRecorder) else None)
            stack.enter_context(explicit_attention(module, functools.partial(recorder.record, index), attend))
        yield recorder
