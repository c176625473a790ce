"""Full LRP (the CVPR 2021 paper's ``full`` baseline on ``ViT_orig_LRP``): relevance down to the pixels.

docs/METHODS.md, "The CVPR 2021 paper's baselines": the LRP pass under the
ORIGINAL rules through every block, then below them: the position-embedding
add (the image's share), the patch tokens back onto the grid, and the patch
convolution by the bounded z^B rule (:func:`heatmap.explainers.lrp.pixel_relevance`).
The map is the pixels' relevance summed over the colour channels: ``[H, W]``
at the model's input size, not the patch grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from heatmap.explainers.registry import Evidence, Method, register

if TYPE_CHECKING:
    import torch


def relevance(evidence: Evidence, options: Mapping[str, Any]) -> torch.Tensor:
    assert evidence.pixel_relevance is not None
    return evidence.pixel_relevance.sum(dim=1)  # [B, 3, H, W] -> [B, H, W]


METHOD = register(Method(
    name="full-lrp",
    summary="Full LRP: relevance down to the pixels through the patch embedding, original rules "
            "(the CVPR 2021 paper's baseline).",
    description="The LRP pass under the original rules through every block, the position embedding and the "
                "patch convolution (z^B rule), summed over colour channels: a pixel-level [H, W] map.",
    options=(),
    relevance=relevance,
    reads_gradients=False,
    lrp_rules="original",
    resolution="pixels",
    towers=frozenset({"image"}),
))
