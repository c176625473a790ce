"""An open_clip image tower that is a timm trunk (``TimmModel``: SigLIP, SigLIP2, EVA02-CLIP, PE-Core, ViTamin, ...).

The trunk is a timm ViT, seen exactly as the timm adapter sees it
(:class:`heatmap.models.timm.adapter.TimmTower`: its blocks, prefix tokens,
pooling, an attention-pool head as one more layer); only the read-out differs:
the tower's embedding is open_clip's ``head`` (a projection, or nothing) of
the trunk's pooled features.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from heatmap.errors import UnsupportedModelError
from heatmap.models.protocols import LrpView
from heatmap.models.timm.adapter import TimmTower, architecture_problem


def timm_tower_problem(visual: Any) -> str | None:
    """What no rule covers in an open_clip ``TimmModel`` image tower, or None."""
    problem = architecture_problem(visual.trunk)
    if problem:
        return f"image tower TimmModel({type(visual.trunk).__name__}): {problem}"
    if "pool" in getattr(visual, "head", {}):  # a 2D attention pool on a feature map, not on tokens
        return f"image tower TimmModel with a {type(visual.head.pool).__name__} head on its feature map"
    return None


class TimmTrunkTower(TimmTower):
    """The image tower of an open_clip CLIP whose ``visual`` is a ``TimmModel``.

    Args:
        visual: the ``TimmModel`` (its ``trunk`` a timm ViT, its ``head`` open_clip's projection).
        name: the model's name, for messages.
    """

    def __init__(self, visual: Any, name: str) -> None:
        super().__init__(visual.trunk, name)
        self.visual = visual

    def block_readout(self, tokens: torch.Tensor) -> torch.Tensor:
        """The unit image embedding of a block's output tokens (docs/METHODS.md, legrad).

        With an attention-pool head, through the whole read-out ("Modern ViT
        parts": final norm, the head, its MLP, the projection). Otherwise the
        CLIP rule of the authors: the mean of ALL tokens, then the final norm
        (timm's ``norm`` and ``fc_norm``) and the projections.
        """
        trunk = self.model
        if self.pool_head is not None:
            pooled = trunk.forward_head(trunk.norm(tokens))
        else:
            pooled = trunk.head(trunk.head_drop(trunk.fc_norm(trunk.norm(tokens.mean(dim=1)))))
        embedding: torch.Tensor = self.visual.head(pooled)
        return F.normalize(embedding, dim=-1)

    def lrp_view(self) -> LrpView:
        from heatmap.models.timm.lrp import unsupported_operation

        problem = unsupported_operation(self.model, classifier=False)
        if problem:
            raise UnsupportedModelError(f"{self.name}: {problem} is not covered by the LRP rules")
        raise UnsupportedModelError(f"{self.name}: the LRP pass through an open_clip image tower that is a timm trunk "
                                    "(TimmModel) is not implemented")
