"""One tower of a transformers model, as the driver sees it (:class:`heatmap.models.protocols.Tower`).

What every family shares lives here: the layer stack, the attention probe
around a forward pass, the blocks' output tokens, the query row, the traced
layer parts and the LRP view. What differs (embeddings, pooling, heads) is
filled in by the family classes of :mod:`heatmap.models.hf.families`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from heatmap.errors import UnsupportedModelError
from heatmap.models.base import query_weights
from heatmap.models.capture import AttentionRecorder, FusedRecorder
from heatmap.models.hf.attention import FusedRoute, attention_probe, layer_routes
from heatmap.models.hf.structure import LayerParts, layer_stack, trace_layers
from heatmap.models.protocols import HeadActivations, LrpView, TowerKind

if TYPE_CHECKING:
    from heatmap.models.capture import ActivationCapture, Slot
    from heatmap.models.protocols import BlockActivations


class HfTower:
    """The family-independent half of a transformers tower.

    Args:
        model: the whole transformers model (the probe switches all its configs).
        module: the tower itself (``model.vit``, ``model.vision_model``, ``model.text_model``, ...).
        kind: ``"image"`` or ``"text"``.
        name: the model's name, for messages.
    """

    kind: TowerKind
    # where the LRP pass starts: a classifier's target logit, or a CLIP tower's embedding (docs/METHODS.md)
    lrp_start: Literal["logit", "embedding"] = "embedding"

    def __init__(self, model: Any, module: Any, kind: TowerKind, name: str) -> None:
        self.model = model
        self.module = module
        self.kind = kind
        self.name = name
        self.config = module.config
        self.layers = layer_stack(module, int(self.config.num_hidden_layers), name)
        self._parts: list[LayerParts] | None = None
        self._view: LrpView | None = None

    # -- filled in by each family ----------------------------------------------------

    @property
    def num_prefix_tokens(self) -> int:
        return 0

    @property
    def class_token(self) -> int | None:
        return None

    def trace_input(self) -> dict[str, torch.Tensor]:
        """A small input for :meth:`parts`' traced forward pass of the tower (keyword arguments)."""
        raise NotImplementedError

    def block_readout(self, tokens: torch.Tensor) -> torch.Tensor:
        raise UnsupportedModelError(f"{self.name}: its {self.kind} tower has no block read-out")

    def block_readout_problem(self) -> str | None:
        """Why :meth:`block_readout` cannot be read for this tower, or None."""
        return None if self.kind == "image" else f"the {self.kind} tower has no block read-out"

    def lrp_problem(self) -> str | None:
        """The first operation outside the blocks that the LRP rules do not cover, or None."""
        return None

    def head_weight(self) -> torch.Tensor | None:
        """The final Linear's weight ``[C, D]`` (classifier or projection)."""
        raise NotImplementedError

    def register_lrp_head(self, capture: ActivationCapture, slot: Slot) -> None:
        raise NotImplementedError

    def lrp_head_activations(self, slot: Slot, last_block: BlockActivations) -> HeadActivations:
        raise NotImplementedError

    def patch_embedding(self) -> tuple[nn.Conv2d | None, str | None]:
        """The patch convolution for a pass to the pixels, or None and why not."""
        return None, f"the {self.kind} tower (it has no pixels)"

    def register_lrp_embedding(self, capture: ActivationCapture, slot: Slot) -> None:
        """Record the patch convolution's input and output, and the embedded tokens (docs/METHODS.md, full-lrp)."""

    # -- shared ------------------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        return len(self.layers)

    def query(self, batch: int, num_tokens: int) -> torch.Tensor:
        """``[B, N]``: one-hot at the class token, or uniform over the patches (docs/METHODS.md, query row)."""
        return query_weights(batch, num_tokens, self.class_token, self.num_prefix_tokens)

    def new_recorder(self, track_from: int | None) -> AttentionRecorder:
        """Where a capture puts the layers' probabilities."""
        return AttentionRecorder(self.num_blocks, track_from, self.name)

    def record(self, recorder: AttentionRecorder, index: int, probs: torch.Tensor) -> torch.Tensor:
        """Keep a layer's probabilities; return what the forward pass goes on with."""
        return recorder.record(index, probs)

    # whether the layers may keep a fused kernel (FusedRecorder); not with an attention-pool head's recorder
    fused_attention = True

    @contextmanager
    def attention_capture(self, track_from: int | None, fused: bool = False) -> Iterator[AttentionRecorder]:
        """Each layer's probabilities through the attention probe (eager, or ``fused``: the attention from
        PyTorch's fused kernel, the probabilities recomputed beside it) and, when tracked, its output tokens."""
        fused = fused and self.fused_attention
        recorder = FusedRecorder(self.num_blocks, track_from, self.name) if fused else self.new_recorder(track_from)
        called: set[int] = set()

        def once(index: int) -> None:
            if index in called:  # two attention calls in one layer: not one self-attention per block
                raise UnsupportedModelError(f"{self.name}: layer {index} calls attention twice; its structure is "
                                            "not one vit-heatmap knows")
            called.add(index)

        def route(index: int, probs: torch.Tensor) -> torch.Tensor:
            once(index)
            return self.record(recorder, index, probs)

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                   scale: float) -> torch.Tensor:
            once(index)
            assert isinstance(recorder, FusedRecorder)
            return recorder.attend(index, q, k, v, bias, scale)

        handles = [layer.register_forward_hook(
            lambda _module, _inputs, output, index=index: recorder.record_output(
                index, output[0] if isinstance(output, tuple) else output))
            for index, layer in enumerate(self.layers)]
        routes = layer_routes(list(self.layers), route)
        fused_routes: dict[nn.Module, FusedRoute] | None = (
            {module: functools.partial(attend, index) for index, layer in enumerate(self.layers)
             for module in layer.modules()} if fused else None)
        try:
            with attention_probe(self.model, {} if fused else routes, fused_routes):
                yield recorder
        finally:
            for handle in handles:
                handle.remove()

    def parts(self) -> list[LayerParts]:
        """Each layer's parts by role, traced once (:mod:`heatmap.models.hf.structure`)."""
        if self._parts is None:
            inputs = self.trace_input()
            self._parts = trace_layers(self.model, self.layers, lambda: self.module(**inputs), self.name)
        return self._parts

    def lrp_view(self) -> LrpView:
        if self._view is None:
            from heatmap.models.hf.lrp import hf_lrp_view

            self._view = hf_lrp_view(self)
        return self._view

    def _parameter(self) -> torch.Tensor:
        parameter: torch.Tensor = next(self.module.parameters())
        return parameter
