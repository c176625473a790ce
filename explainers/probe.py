"""The attention probe: each block's attention probabilities as explicit tensors.

Fused attention kernels (``F.scaled_dot_product_attention``) never form the
attention matrix, so a hook in the usual place silently captures nothing. The
probe switches each attention module to its explicit path for the duration of
one ``with`` block, records the post-softmax probabilities (the tensor that
multiplies V), and puts every setting back on exit, also when an exception is
raised. An incomplete capture is an error, never an empty map.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from heatmap.errors import HeatmapError


class AttentionProbe:
    """Records the attention probabilities of every block during a forward pass.

    Args:
        model: the whole model (its parameters stop requiring gradients inside
            the context, so a backward pass computes no weight gradients).
        attention_modules: the attention module of each block, in forward order.
        model_name: used in error messages.
        track_from: index of the first block whose probabilities need
            gradients (the start layer), or None when no gradient is needed.

    Attributes:
        attention_probs: after the forward pass, one tensor ``[B, H, N, N]``
            per block.
    """

    def __init__(
        self,
        model: nn.Module,
        attention_modules: Sequence[nn.Module],
        model_name: str,
        track_from: int | None = None,
    ) -> None:
        self.model = model
        self.attention_modules = list(attention_modules)
        self.model_name = model_name
        self.track_from = track_from
        self._probs: list[torch.Tensor | None] = []
        self._stack: ExitStack | None = None

    def __enter__(self) -> "AttentionProbe":
        self._probs = [None] * len(self.attention_modules)
        with ExitStack() as stack:
            self._freeze_parameters(stack)
            for index, module in enumerate(self.attention_modules):
                self._instrument(stack, index, module)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    @property
    def attention_probs(self) -> list[torch.Tensor]:
        """Each block's probabilities ``[B, H, N, N]``; raises if any is missing."""
        missing = [i for i, probs in enumerate(self._probs) if probs is None]
        if missing:
            raise HeatmapError(
                f"{self.model_name}: captured no attention probabilities from block(s) "
                f"{missing}; its attention implementation does not expose them, so no "
                "attention-based map can be made for this model"
            )
        return list(self._probs)  # type: ignore[arg-type]

    def attention_grads(self, score: torch.Tensor, retain_graph: bool = False) -> list[torch.Tensor]:
        """Gradients of ``score`` with respect to the tracked blocks' probabilities.

        Only the tensors the methods read are differentiated (no weight
        gradients). Summing per-image scores gives each image its own
        gradient, because nothing in a ViT mixes images.

        Args:
            score: a scalar, usually the sum over the batch of the target scores.
            retain_graph: keep the graph for another target.

        Returns:
            one tensor ``[B, H, N, N]`` per block from ``track_from`` on.
        """
        if self.track_from is None:
            raise RuntimeError("the probe was opened without track_from; no gradients were tracked")
        tracked = self.attention_probs[self.track_from:]
        return list(torch.autograd.grad(score, tracked, retain_graph=retain_graph))

    def attention_grads_batched(self, scores: torch.Tensor, retain_graph: bool = False) -> list[torch.Tensor]:
        """The gradients of each of K scalar ``scores`` at once, vectorised over K.

        The same numbers as K calls of :meth:`attention_grads`, from one
        vmapped backward pass (``is_grads_batched``).

        Returns:
            one tensor ``[K, B, H, N, N]`` per tracked block.
        """
        if self.track_from is None:
            raise RuntimeError("the probe was opened without track_from; no gradients were tracked")
        tracked = self.attention_probs[self.track_from:]
        one_hot = torch.eye(scores.shape[0], dtype=scores.dtype, device=scores.device)
        return list(torch.autograd.grad(scores, tracked, grad_outputs=one_hot, is_grads_batched=True,
                                        retain_graph=retain_graph))

    # -- instrumentation ---------------------------------------------------

    def _freeze_parameters(self, stack: ExitStack) -> None:
        # Weights need no gradient: the backward then stops at the tracked
        # attention probabilities instead of building a graph for every layer.
        params = [p for p in self.model.parameters() if p.requires_grad]
        for param in params:
            param.requires_grad_(False)
        stack.callback(lambda: [p.requires_grad_(True) for p in params])

    def _record(self, index: int, probs: torch.Tensor) -> torch.Tensor:
        if self.track_from is not None and index == self.track_from and torch.is_grad_enabled():
            # The start block becomes a leaf of the graph: blocks before it
            # are never differentiated, blocks after it depend on it.
            probs = probs.detach().requires_grad_(True)
        self._probs[index] = probs
        return probs

    def _instrument(self, stack: ExitStack, index: int, module: nn.Module) -> None:
        if isinstance(module, nn.MultiheadAttention):
            self._instrument_multihead(stack, index, module)
        elif hasattr(module, "fused_attn") and isinstance(getattr(module, "attn_drop", None), nn.Module):
            self._instrument_timm(stack, index, module)
        else:
            raise HeatmapError(
                f"{self.model_name}: block {index} uses {type(module).__name__}, an attention "
                "implementation the probe does not know; no attention map can be made"
            )

    def _instrument_timm(self, stack: ExitStack, index: int, module: nn.Module) -> None:
        # timm's explicit path runs softmax -> attn_drop -> @ v; the output of
        # attn_drop (identity in eval mode) is exactly the matrix that multiplies V.
        was_fused = module.fused_attn
        module.fused_attn = False
        stack.callback(setattr, module, "fused_attn", was_fused)
        handle = module.attn_drop.register_forward_hook(
            lambda _module, _inputs, output: self._record(index, output)
        )
        stack.callback(handle.remove)

    def _instrument_multihead(self, stack: ExitStack, index: int, module: nn.MultiheadAttention) -> None:
        # nn.MultiheadAttention returns no usable probabilities (need_weights=False
        # in open_clip, and a fused kernel in eval mode): run the same attention
        # explicitly with the module's own weights for the duration of the call.
        if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
            raise HeatmapError(f"{self.model_name}: block {index} uses a MultiheadAttention variant "
                               "(separate k/v sizes, bias_k or zero attention) the probe does not support")

        def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                    average_attn_weights=True, is_causal=False):
            output = explicit_multihead_attention(
                module, query, key, value, attn_mask, key_padding_mask,
                record=lambda probs: self._record(index, probs))
            return output, None

        module.forward = forward
        stack.callback(delattr, module, "forward")


def explicit_multihead_attention(module: nn.MultiheadAttention, query, key, value, attn_mask,
                                 key_padding_mask, record) -> torch.Tensor:
    """What ``nn.MultiheadAttention`` computes, with the probabilities as a tensor.

    Everything runs in the dtype of the module's weights: the explainers run
    a model in the dtype they compute in (docs/METHODS.md, "Precision").

    Args:
        module: the attention module whose weights are used.
        query, key, value: ``[B, L, D]`` (``[L, B, D]`` when not batch_first).
        attn_mask: ``[L, S]`` or ``[B * H, L, S]``, boolean (True = masked) or additive.
        key_padding_mask: ``[B, S]``, boolean (True = padding) or additive, or None.
        record: called with the probabilities ``[B, H, L, S]``; returns the
            tensor to use in their place.
    """
    if not module.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    batch, length, dim = query.shape
    heads = module.num_heads
    w_q, w_k, w_v = module.in_proj_weight.chunk(3)
    b_q, b_k, b_v = module.in_proj_bias.chunk(3) if module.in_proj_bias is not None else (None, None, None)

    def split_heads(x, weight, bias):
        return F.linear(x, weight, bias).reshape(batch, x.shape[1], heads, dim // heads).transpose(1, 2)

    q, k, v = split_heads(query, w_q, b_q), split_heads(key, w_k, b_k), split_heads(value, w_v, b_v)
    scores = (q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)
    if attn_mask is not None:
        mask = attn_mask.reshape(-1, heads, *attn_mask.shape[-2:]) if attn_mask.dim() == 3 else attn_mask
        scores = _apply_mask(scores, mask)
    if key_padding_mask is not None:
        scores = _apply_mask(scores, key_padding_mask[:, None, None, :])
    probs = record(scores.softmax(dim=-1))
    merged = (probs @ v).transpose(1, 2).reshape(batch, length, dim)
    output = module.out_proj(merged)
    return output if module.batch_first else output.transpose(0, 1)


def _apply_mask(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask, float("-inf"))
    return scores + mask.to(scores.dtype)
