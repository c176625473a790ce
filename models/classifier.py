"""What every classifier adapter does the same way, whatever its library: targets, class names, the scored pass."""

from __future__ import annotations

import difflib
from typing import Any

import torch

from heatmap.errors import UsageError
from heatmap.models.base import AdapterBase
from heatmap.models.protocols import Grid, Scored, TowerScores


class ClassifierBase(AdapterBase):
    """The library-independent half of a classifier adapter.

    A subclass sets ``model``, ``name``, ``labels``, ``transform`` and ``tower``
    (with ``query(batch, num_tokens)`` and ``grid(images)``), and implements
    :meth:`logits` and :attr:`num_classes`.
    """

    name: str
    labels: list[str] | None
    tower: Any

    @property
    def towers(self) -> tuple[Any]:
        return (self.tower,)

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C]``: the model's pre-softmax logits of preprocessed images."""
        raise NotImplementedError

    def score(self, images: torch.Tensor, targets: torch.Tensor | None, top_k: int) -> Scored:
        """Logits, the targets (given, or the ``top_k`` highest) and their scores ``[B, K]``."""
        logits = self.logits(images)
        targets = self._targets(logits.detach(), targets, top_k)
        scores = logits.gather(1, targets)
        one_hot = torch.nn.functional.one_hot(targets, logits.shape[1]).to(logits.dtype)  # [B, K, C]
        height, width = self.tower.grid(images)
        side = TowerScores(self.tower, objectives=scores.sum(dim=0),
                           lrp_targets=[targets[:, k] for k in range(targets.shape[1])],
                           query=self.tower.query(images.shape[0], self.tower.num_prefix_tokens + height * width),
                           readout=Grid(self.tower.num_prefix_tokens, height, width),
                           readout_weights=[one_hot[:, k] for k in range(targets.shape[1])])
        labels = [[self.label(int(t)) for t in row] for row in targets.tolist()]
        plain = logits.detach()
        probabilities = plain.softmax(dim=1).gather(1, targets)
        class_ranks = (plain[:, None, :] > scores.detach()[:, :, None]).sum(dim=2)
        return Scored(scores=scores, targets=targets, labels=labels, towers=[side], probabilities=probabilities,
                      class_ranks=class_ranks, classes=int(logits.shape[1]))

    def _targets(self, logits: torch.Tensor, targets: torch.Tensor | None, top_k: int) -> torch.Tensor:
        num_classes = logits.shape[1]
        if targets is None:
            if not 1 <= top_k <= num_classes:
                raise UsageError(f"top-k {top_k} is out of range: the model has {num_classes} classes")
            return logits.topk(top_k, dim=1).indices
        targets = targets.to(device=logits.device, dtype=torch.long)
        if targets.dim() == 1:
            targets = targets[:, None]
        if targets.shape[0] != logits.shape[0]:
            raise UsageError(f"got targets for {targets.shape[0]} images but {logits.shape[0]} images")
        bad = targets[(targets < 0) | (targets >= num_classes)]
        if bad.numel():
            raise UsageError(f"target {int(bad[0])} is out of range: the model has {num_classes} "
                             f"classes (0..{num_classes - 1})")
        return targets

    def label(self, index: int) -> str | None:
        """The class name of ``index``, or None when the model has none."""
        if self.labels is None or not 0 <= index < len(self.labels):
            return None
        return self.labels[index]

    def class_index(self, target: str) -> int:
        """A target given as an index or a class name -> the class index."""
        num_classes = self.num_classes
        if target.lstrip("-").isdigit():
            index = int(target)
        elif self.labels is None:
            raise UsageError(f"{self.name} has no class names; give the target as an index 0..{num_classes - 1}")
        else:
            matches = [i for i, label in enumerate(self.labels) if label.lower() == target.lower()]
            if not matches:
                close = difflib.get_close_matches(target, self.labels, n=3)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise UsageError(f"{self.name} has no class {target!r}{hint}")
            index = matches[0]
        if not 0 <= index < num_classes:
            raise UsageError(f"target {index} is out of range: {self.name} has {num_classes} classes "
                             f"(0..{num_classes - 1})")
        return index
