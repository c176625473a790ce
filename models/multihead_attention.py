"""``nn.MultiheadAttention`` computed explicitly, so that its probabilities are a tensor.

PyTorch's module never forms the probabilities on its fused path and, when
asked for them, averages them over heads outside the graph the output comes
from. open_clip's blocks and SigLIP's attention-pooling head both use it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import nn

from heatmap.errors import UnsupportedModelError
from heatmap.models.capture import additive_bias, replaced_forward

# (q, k, v, additive bias or None, scale) -> the attention output [B, H, L, d]
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", float], torch.Tensor]


def check_plain_multihead_attention(module: nn.Module, where: str) -> None:
    """Refuse a ``MultiheadAttention`` variant the explicit form does not compute (separate k/v sizes, ``bias_k``,
    zero attention), naming ``where`` it is."""
    if (not isinstance(module, nn.MultiheadAttention) or not module._qkv_same_embed_dim
            or module.bias_k is not None or module.add_zero_attn):
        raise UnsupportedModelError(f"{where} uses a MultiheadAttention variant (separate k/v sizes, bias_k or zero "
                                    "attention) that vit-heatmap does not support")


def explicit_forward(module: nn.MultiheadAttention, record: Callable[[torch.Tensor], torch.Tensor],
                     attend: Attend | None = None) -> Callable[..., tuple[torch.Tensor, None]]:
    """A stand-in for ``module.forward`` with its signature; the probabilities go to ``record`` (or, fused,
    the attention goes through ``attend``)."""
    def forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        return explicit_multihead_attention(module, query, key, value, attn_mask, key_padding_mask, record,
                                            attend), None

    return forward


def explicit_attention(module: nn.MultiheadAttention, record: Callable[[torch.Tensor], torch.Tensor],
                       attend: Attend | None = None) -> AbstractContextManager[None]:
    """Within: ``module`` computes its attention explicitly, the probabilities through ``record`` (or its
    attention through ``attend``, a fused kernel); restored on exit."""
    return replaced_forward(module, explicit_forward(module, record, attend))


def explicit_multihead_attention(module: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor,
                                 value: torch.Tensor, attn_mask: torch.Tensor | None,
                                 key_padding_mask: torch.Tensor | None,
                                 record: Callable[[torch.Tensor], torch.Tensor],
                                 attend: Attend | None = None) -> torch.Tensor:
    """What ``nn.MultiheadAttention`` computes, with the probabilities as a tensor.

    Everything runs in the dtype of the module's weights: the driver runs a
    model in the dtype it explains in (docs/METHODS.md, "Precision").

    Args:
        module: the attention module whose weights are used.
        query, key, value: ``[B, L, D]`` (``[L, B, D]`` when not batch_first).
        attn_mask: ``[L, S]`` or ``[B * H, L, S]``, boolean (True = masked) or additive.
        key_padding_mask: ``[B, S]``, boolean (True = padding) or additive, or None.
        record: called with the probabilities ``[B, H, L, S]``; returns the
            tensor to use in their place.
        attend: instead, ``(q, k, v, additive bias, scale) -> [B, H, L, d]``: the
            attention output from a fused kernel (``FusedRecorder.attend``).
    """
    if not module.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    batch, length, dim = query.shape
    heads = module.num_heads
    w_q, w_k, w_v = module.in_proj_weight.chunk(3)
    b_q, b_k, b_v = module.in_proj_bias.chunk(3) if module.in_proj_bias is not None else (None, None, None)

    def split_heads(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias).reshape(batch, x.shape[1], heads, dim // heads).transpose(1, 2)

    q, k, v = split_heads(query, w_q, b_q), split_heads(key, w_k, b_k), split_heads(value, w_v, b_v)
    mask = None
    if attn_mask is not None:
        mask = attn_mask.reshape(-1, heads, *attn_mask.shape[-2:]) if attn_mask.dim() == 3 else attn_mask
    padding = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
    if attend is not None:  # the fused kernel; one additive bias of both masks
        biases = [bias for bias in (additive_bias(mask, keep_is_true=False, dtype=q.dtype),
                                    additive_bias(padding, keep_is_true=False, dtype=q.dtype)) if bias is not None]
        attended = attend(q, k, v, sum(biases[1:], biases[0]) if biases else None, (dim // heads) ** -0.5)
    else:
        scores = (q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)
        if mask is not None:
            scores = _apply_mask(scores, mask)
        if padding is not None:
            scores = _apply_mask(scores, padding)
        attended = record(scores.softmax(dim=-1)) @ v
    merged = attended.transpose(1, 2).reshape(batch, length, dim)
    output: torch.Tensor = module.out_proj(merged)
    return output if module.batch_first else output.transpose(0, 1)


def _apply_mask(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask, float("-inf"))
    return scores + mask.to(scores.dtype)
