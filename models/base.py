"""What every adapter does the same way, whatever its library: device, dtype, copies, preprocessing."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from heatmap.models.geometry import crop_box
from heatmap.models.protocols import Box


def query_weights(batch: int, num_tokens: int, class_token: int | None, first_pooled: int) -> torch.Tensor:
    """``[B, N]`` float64, the query row's weights (docs/METHODS.md): one-hot at the class token, or for a model
    that averages tokens, uniform over the tokens from ``first_pooled`` on. Cast to the relevance's dtype where used.
    """
    weights = torch.zeros(num_tokens, dtype=torch.float64)
    if class_token is not None:
        weights[class_token] = 1.0
    else:
        weights[first_pooled:] = 1.0 / (num_tokens - first_pooled)
    return weights.expand(batch, num_tokens)


class AdapterBase:
    """The model-independent half of an adapter.

    A subclass sets ``model`` (the library's model, in eval mode) and
    ``transform`` (its eval image transform), and implements :meth:`rebuilt`.
    """

    model: Any
    transform: Callable[[Image.Image], torch.Tensor]

    @property
    def device(self) -> torch.device:
        weight: torch.Tensor = next(self.model.parameters())
        return weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights."""
        weight: torch.Tensor = next(self.model.parameters())
        return weight.dtype

    def rebuilt(self, model: Any) -> Any:
        """The same adapter around another model object (a converted copy)."""
        raise NotImplementedError

    def converted(self, dtype: torch.dtype) -> Any:
        """This adapter when the model is in ``dtype`` already, else one over a converted copy.

        The caller's model is never changed; the copy costs the model's size once per run.
        """
        if dtype == self.dtype:
            return self
        return self.rebuilt(copy.deepcopy(self.model).to(dtype))

    def preprocess(self, pictures: Sequence[Image.Image]) -> tuple[torch.Tensor, list[Box]]:
        """The model's own eval transform.

        Returns:
            ``[B, 3, H, W]`` on the model's device and dtype, and per picture the
            box ``(left, top, right, bottom)`` of it that the tensor shows (the
            centre crop, say), for overlays at full size.
        """
        tensor = torch.stack([self.transform(picture) for picture in pictures])
        boxes = [crop_box(self.transform, picture.size) for picture in pictures]
        return tensor.to(device=self.device, dtype=self.dtype), boxes
