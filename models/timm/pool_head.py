"""timm's attention-pool head (``AttentionPoolLatent``: SigLIP's "MAP" head in timm and open_clip) with its
probabilities as a tensor.

The head has no attention-dropout module to hook and its fused path never
forms the probabilities, so for the duration of a capture its ``forward`` is
the same computation written out with the head's own modules (timm 1.0's
``AttentionPoolLatent.forward``), the probabilities handed to a recorder;
on exit, also on error, the instance gets its own ``forward`` back.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from heatmap.errors import UnsupportedModelError
from heatmap.models.capture import replaced_forward

Record = Callable[[torch.Tensor], torch.Tensor]


def pool_head_problem(head: Any) -> str | None:
    """What :func:`explicit_pool_forward` does not compute in ``head``, or None."""
    expected = ("latent", "q", "kv", "q_norm", "k_norm", "proj", "proj_drop", "norm", "mlp", "pool", "pos_embed",
                "num_heads", "head_dim", "latent_len", "scale")
    missing = [attribute for attribute in expected if not hasattr(head, attribute)]
    if missing:
        return (f"the attention-pool head {type(head).__name__} lacks {', '.join(missing)}; its structure is not "
                "the one vit-heatmap knows")
    if head.pool not in ("token", "avg"):
        return f"the attention-pool head's own pooling {head.pool!r} is not supported (token or avg are)"
    return None


def explicit_pool_forward(head: Any, x: torch.Tensor, record: Record) -> torch.Tensor:
    """``AttentionPoolLatent.forward`` with explicit attention; the probabilities ``[B, H, Q, N]`` go to ``record``."""
    batch, tokens, channels = x.shape
    if head.pos_embed is not None:
        x = x + head.pos_embed.unsqueeze(0).to(x.dtype)
    latent = head.latent.expand(batch, -1, -1)
    q = head.q(latent).reshape(batch, head.latent_len, head.num_heads, head.head_dim).transpose(1, 2)
    kv = head.kv(x).reshape(batch, tokens, 2, head.num_heads, head.head_dim).permute(2, 0, 3, 1, 4)
    k, v = kv.unbind(0)
    q, k = head.q_norm(q), head.k_norm(k)
    probs = record(((q * head.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
    pooled = (probs @ v).transpose(1, 2).reshape(batch, head.latent_len, -1)
    pooled = head.proj_drop(head.proj(pooled))
    if head.mlp is not None:
        pooled = pooled + head.mlp(head.norm(pooled))
    result: torch.Tensor = pooled[:, 0] if head.pool == "token" else pooled.mean(1)
    return result


def recorded_pool_head(head: nn.Module, record: Record) -> AbstractContextManager[None]:
    """Within: ``head`` computes its attention explicitly, the probabilities through ``record``."""
    def forward(x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attn_mask is not None:
            raise UnsupportedModelError("an attention mask on the attention-pool head (padded NaFlex patches) "
                                        "is not supported")
        return explicit_pool_forward(head, x, record)

    return replaced_forward(head, forward)
