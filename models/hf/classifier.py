"""The adapter for transformers ViT classifiers: ``ViTForImageClassification`` and DeiT's two classifiers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from heatmap.errors import UnsupportedModelError
from heatmap.models.classifier import ClassifierBase
from heatmap.models.hf.families import ViTClassifierTower

CLASSIFIER_CLASSES = ("ViTForImageClassification", "DeiTForImageClassification",
                      "DeiTForImageClassificationWithTeacher")


def config_labels(config: Any) -> list[str] | None:
    """Short class names from ``config.id2label`` ("tabby" of "tabby, tabby cat"); None for the placeholder
    ``LABEL_i`` names a config gets when it has none."""
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label.get(i, id2label.get(str(i), ""))) for i in range(int(config.num_labels))]
    if not names or all(name == f"LABEL_{i}" for i, name in enumerate(names)):
        return None
    return [name.split(",")[0].strip() for name in names]


class HfClassifierAdapter(ClassifierBase):
    """A transformers ViT classifier seen through the seams the driver uses.

    Args:
        model: one of :data:`CLASSIFIER_CLASSES`, put in eval mode here.
        name: how the user named it (repo id, directory).
        transform: its eval image transform (from its image processor).
        labels: class names by index; None = from ``config.id2label``.
    """

    def __init__(self, model: Any, name: str, transform: Callable[[Image.Image], torch.Tensor],
                 labels: Sequence[str] | None = None) -> None:
        if type(model).__name__ not in CLASSIFIER_CLASSES:
            raise UnsupportedModelError(f"{name}: {type(model).__name__} is not supported; the transformers "
                                        f"classifiers that are: {', '.join(CLASSIFIER_CLASSES)}")
        self.model = model.eval()
        self.name = name
        self.transform = transform
        self.labels = list(labels) if labels is not None else config_labels(model.config)
        self.tower = ViTClassifierTower(model, name)

    @property
    def num_classes(self) -> int:
        return int(self.model.config.num_labels)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(pixel_values=images).logits
        return logits

    def rebuilt(self, model: Any) -> HfClassifierAdapter:
        return HfClassifierAdapter(model, self.name, self.transform, self.labels)
