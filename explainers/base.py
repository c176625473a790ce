"""The Explainer base class: one forward pass, the targets, the backward passes.

Each method subclasses :class:`Explainer` and overrides :meth:`relevance`,
which turns the recorded attention (and its gradients) into the relevance
matrix ``R``. Everything else, shared by all methods, happens here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from contextlib import nullcontext
from typing import Any, ClassVar, ContextManager, Mapping, Sequence

import torch

from heatmap.errors import UsageError
from heatmap.explainers.aggregation import query_map, resolve_start_layer
from heatmap.explainers.probe import AttentionProbe
from heatmap.models.devices import compute_dtype, full_float32


@dataclass
class Explanation:
    """What an explainer returns.

    Attributes:
        maps: raw maps of docs/METHODS.md on the CPU, in the dtype the
            explanation computed in (float32, or float64 for a float64 model or
            ``precision="float64"``), ``[B, K, gh, gw]`` for K targets per image
            (``[B, gh, gw]`` after :meth:`squeeze`).
        targets: class indices ``[B, K]`` (int64).
        scores: the target scores ``y`` (pre-softmax logits) ``[B, K]``.
        labels: per image, per target, the class name or None.
        method: the method's name.
        options: the method's options as used (start layer as given).
    """

    maps: torch.Tensor
    targets: torch.Tensor
    scores: torch.Tensor
    labels: list[list[str | None]]
    method: str
    options: dict[str, Any] = field(default_factory=dict)

    def squeeze(self) -> "Explanation":
        """Drop the target dimension when there is one target per image."""
        if self.maps.dim() != 4 or self.maps.shape[1] != 1:
            raise ValueError("squeeze() needs exactly one target per image")
        return replace(self, maps=self.maps[:, 0], targets=self.targets[:, 0],
                       scores=self.scores[:, 0], labels=[row[0] for row in self.labels])


class Explainer:
    """Base class of the methods; see docs/METHODS.md for each one's math.

    Args:
        adapter: a model adapter (``heatmap.models``).
        precision: ``auto`` (the wider of float32 and the model's dtype),
            ``float32`` or ``float64``; when it differs from the model's dtype,
            a converted copy of the model is explained (docs/METHODS.md, "Precision").
            None: the adapter is in the dtype to compute in already (a CLIP tower
            of a converted :class:`~heatmap.explainers.clip.ClipExplainer`).
        **options: the method's options; unknown names are an error.
    """

    name: ClassVar[str]
    needs_gradients: ClassVar[bool]
    defaults: ClassVar[Mapping[str, Any]]

    def __init__(self, adapter, precision: str | None = "auto", **options: Any) -> None:
        self.options = self.resolve_options(options)
        self.adapter = adapter if precision is None else adapter.converted(compute_dtype(adapter.dtype, precision))

    @classmethod
    def resolve_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults updated with ``options``, checked (no model needed, so callers fail fast)."""
        unknown = set(options) - set(cls.defaults)
        if unknown:
            raise UsageError(f"{cls.name} has no option {sorted(unknown)}; "
                             f"its options are {sorted(cls.defaults)}")
        resolved = {**cls.defaults, **options}
        cls.validate_options(resolved)
        return resolved

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> None:
        """Check option values; raise :class:`UsageError` with the fix."""

    def relevance(self, attention_probs: Sequence[torch.Tensor],
                  attention_grads: Sequence[torch.Tensor] | None, start: int) -> torch.Tensor:
        """The relevance matrix ``R`` ``[B, N, N]`` of one target.

        Args:
            attention_probs: every block's probabilities ``[B, H, N, N]``.
            attention_grads: gradients of the target score w.r.t. the
                probabilities of blocks ``start..L-1`` (None for gradient-free methods).
            start: the start layer, resolved to ``0..L-1``.
        """
        raise NotImplementedError

    def recording(self, start: int) -> ContextManager[Any]:
        """What the method records during the forward pass besides attention (nothing by default)."""
        return nullcontext()

    def target_relevance(self, attention_probs: Sequence[torch.Tensor], attention_grads: Sequence[torch.Tensor],
                         start: int, recorded: Any, target: torch.Tensor) -> torch.Tensor:
        """``R`` of one target; ``recorded`` is what :meth:`recording` gave.

        ``target``: class indices ``[B]``; for a CLIP tower, ``[B, E]``, the
        score's gradient with respect to the tower's unit embedding.
        """
        return self.relevance(attention_probs, attention_grads, start)

    def explain(self, images: torch.Tensor, targets: torch.Tensor | None = None,
                top_k: int = 1) -> Explanation:
        """Explain each image for each of its targets.

        Args:
            images: preprocessed ``[B, 3, H, W]``; moved to the model's device and
                the explanation's dtype.
            targets: class indices ``[B, K]``; None = the ``top_k`` highest logits.
            top_k: how many top classes when ``targets`` is None.

        Returns:
            an :class:`Explanation` with ``[B, K, gh, gw]`` maps.
        """
        adapter = self.adapter
        images = images.to(device=adapter.device, dtype=adapter.dtype)
        start = resolve_start_layer(self.options.get("start_layer", 0), adapter.num_blocks)
        with full_float32(), \
                AttentionProbe(adapter.model, adapter.attention_modules, adapter.name,
                               track_from=start if self.needs_gradients else None) as probe, \
                self.recording(start) as recorded:
            # Also under a caller's torch.no_grad(): the gradient methods need a graph.
            with torch.set_grad_enabled(self.needs_gradients):
                logits = adapter.logits(images)
                targets = self._resolve_targets(logits.detach(), targets, top_k)
                scores = logits.gather(1, targets)
                objectives = scores.sum(dim=0).unbind()  # per target, summed over independent images
            probs = [p.detach() for p in probe.attention_probs]
            relevances = []
            for k, objective in enumerate(objectives):
                if self.needs_gradients:
                    grads = probe.attention_grads(objective, retain_graph=k + 1 < len(objectives))
                    relevances.append(self.target_relevance(probs, grads, start, recorded, targets[:, k]))
                else:  # class-agnostic: one matrix serves every target
                    relevances.append(relevances[0] if relevances else self.relevance(probs, None, start))
        return self._explanation(images, relevances, targets, scores)

    def _explanation(self, images: torch.Tensor, relevances: Sequence[torch.Tensor], targets: torch.Tensor,
                     scores: torch.Tensor) -> Explanation:
        """The maps of the K relevance matrices ``[B, N, N]``, one per target, as an :class:`Explanation`."""
        adapter = self.adapter
        grid = adapter.grid(images)
        query = adapter.query_weights(relevances[0].shape[-1])
        maps = torch.stack([query_map(r, query, adapter.num_prefix_tokens, grid) for r in relevances], dim=1)
        return Explanation(
            maps=maps.cpu(), targets=targets.cpu(), scores=scores.detach().cpu(),
            labels=[[adapter.label(int(t)) for t in row] for row in targets.tolist()],
            method=self.name, options=dict(self.options),
        )

    def _resolve_targets(self, logits: torch.Tensor, targets: torch.Tensor | None, top_k: int) -> torch.Tensor:
        num_classes = logits.shape[1]
        if targets is None:
            if not 1 <= top_k <= num_classes:
                raise UsageError(f"top-k {top_k} is out of range: the model has {num_classes} classes")
            return logits.topk(top_k, dim=1).indices
        targets = torch.as_tensor(targets, dtype=torch.long, device=logits.device)
        if targets.dim() == 1:
            targets = targets[:, None]
        if targets.shape[0] != logits.shape[0]:
            raise UsageError(f"got targets for {targets.shape[0]} images but {logits.shape[0]} images")
        bad = targets[(targets < 0) | (targets >= num_classes)]
        if bad.numel():
            raise UsageError(f"target {int(bad[0])} is out of range: the model has {num_classes} "
                             f"classes (0..{num_classes - 1})")
        return targets
