"""LeGrad (Bousselham et al., ICCV 2025): each block's gradient of its own read-out.

docs/METHODS.md, "legrad": for each block l from the start layer (default
-2, the authors'), the score ``y_l`` the model's head would read from that
block's output tokens (``Tower.block_readout``; for a CLIP image tower the
authors' mean over all tokens, ``ln_post``, ``proj``, cosine with the unit
text embedding); ``G_l = (d y_l / d A_l)+``, mean over heads and over ALL
query rows, at the patch columns; the map is the sum over the blocks (raw,
not min-max scaled).

The authors define LeGrad for the image tower only, so it explains a CLIP's
images and gives no text-token relevance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from heatmap.explainers.registry import Evidence, Method, register, start_layer_option

if TYPE_CHECKING:
    import torch


def block_map(probs: torch.Tensor, grads: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """``G_l``: ``[B, H, N, N]`` -> clamp, mean over heads, mean over all query rows: ``[B, N]``."""
    return grads.clamp(min=0).mean(dim=1).mean(dim=1)


def relevance(evidence: Evidence, options: Mapping[str, Any]) -> torch.Tensor:
    assert evidence.attention_grads is not None  # each block's block_map
    per_block = list(evidence.attention_grads)
    return sum(per_block[1:], per_block[0])


METHOD = register(Method(
    name="legrad",
    summary="LeGrad: per block, the gradient of the block's own read-out score w.r.t. its attention "
            "(Bousselham et al., ICCV 2025).",
    description="Sum over blocks from the start layer of mean over heads and queries of (d y_l / d A_l)+, where "
                "y_l is the score the head reads from block l's output.",
    options=(start_layer_option(-2),),
    relevance=relevance,
    reduce_gradient=block_map,
    gradients_of="block read-outs",
    towers=frozenset({"image"}),
))
