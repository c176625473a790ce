"""The adapter for transformers image-text models: ``CLIPModel`` and ``SiglipModel``.

CLIP pools its text at the end-of-text token exactly as transformers does
(the first ``eos_token_id``; the argmax of the ids for legacy configs whose
``eos_token_id`` is 2) and scores with a softmax over texts. SigLIP pools the
text's LAST position (its texts are padded to the full context) and scores
each pair on its own, ``sigmoid(s * cos + b)``; its image tower pools by an
attention head (:class:`~heatmap.models.hf.families.SiglipVisionTower`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from heatmap.errors import UnsupportedModelError
from heatmap.models.hf.families import ClipVisionTower, SiglipVisionTower, TextTower, pair
from heatmap.models.image_text import ImageTextBase

IMAGE_TEXT_CLASSES = ("CLIPModel", "SiglipModel")


def _pooled(output: Any) -> torch.Tensor:
    """A ``get_*_features`` result: a tensor in older releases, an output with ``pooler_output`` in newer ones."""
    if isinstance(output, torch.Tensor):
        return output
    pooled: torch.Tensor = output.pooler_output
    return pooled


class HfImageTextAdapter(ImageTextBase):
    """A transformers CLIP or SigLIP seen through the seams the driver uses.

    Args:
        model: a ``CLIPModel`` or ``SiglipModel``, put in eval mode here.
        name: how the user named it.
        tokenizer: its tokenizer (a processor's ``tokenizer``).
        transform: its eval image transform (from its image processor).
    """

    def __init__(self, model: Any, name: str, tokenizer: Any,
                 transform: Callable[[Image.Image], torch.Tensor]) -> None:
        kind = type(model).__name__
        if kind not in IMAGE_TEXT_CLASSES:
            raise UnsupportedModelError(f"{name}: {kind} is not supported; the transformers image-text models "
                                        f"that are: {', '.join(IMAGE_TEXT_CLASSES)}")
        self.model = model.eval()
        self.name = name
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor holds its tokenizer
        self.transform = transform
        self.siglip = kind == "SiglipModel"
        self.independent_texts = self.siglip
        text_config = model.config.text_config
        self.context_length = int(text_config.max_position_embeddings)
        self.eos_token_id = getattr(model.text_model, "eos_token_id", getattr(text_config, "eos_token_id", None))
        if self.siglip:
            self.vision: Any = SiglipVisionTower(model, name)
            self.text: Any = TextTower(model, model.text_model.head, self.text_pool_positions, name)
        else:
            self.vision = ClipVisionTower(model, name)
            self.text = TextTower(model, model.text_projection, self.text_pool_positions, name)

    def rebuilt(self, model: Any) -> HfImageTextAdapter:
        return HfImageTextAdapter(model, self.name, self.tokenizer, self.transform)

    def converted(self, dtype: torch.dtype) -> HfImageTextAdapter:
        import transformers

        if dtype == torch.float64 and not self.siglip and int(transformers.__version__.split(".")[0]) < 5:
            raise UnsupportedModelError(
                f"{self.name}: transformers {transformers.__version__} cannot run CLIP's text tower in float64 (its "
                "causal mask overflows); use --precision float32, or transformers 5")
        adapter: HfImageTextAdapter = super().converted(dtype)
        return adapter

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        encoded = self.tokenizer(list(texts), padding="max_length", max_length=self.context_length,
                                 truncation=True, return_tensors="pt")
        ids: torch.Tensor = encoded["input_ids"]
        return ids.to(self.device)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(_pooled(self.model.get_image_features(pixel_values=images)), dim=-1)

    def text_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(_pooled(self.model.get_text_features(input_ids=tokens)), dim=-1)

    def text_pool_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.siglip:
            return torch.full((len(tokens),), tokens.shape[1] - 1, dtype=torch.long)
        if self.eos_token_id == 2:  # legacy configs: end-of-text has the largest id
            return tokens.argmax(dim=-1)
        is_end = torch.eq(tokens, torch.tensor(self.eos_token_id, device=tokens.device))
        return is_end.int().argmax(dim=-1)

    def text_spans(self, tokens: torch.Tensor) -> list[tuple[int, int]]:
        """CLIP: after the start token up to end-of-text; SigLIP (no start token): up to its first end-of-text."""
        if not self.siglip:
            return [(1, int(end)) for end in self.text_pool_positions(tokens).tolist()]
        eos = self.tokenizer.eos_token_id
        spans = []
        for row in tokens.tolist():
            spans.append((0, row.index(eos) if eos in row else len(row)))
        return spans

    def word_pieces(self, tokens: torch.Tensor) -> list[list[str]]:
        return [[self.tokenizer.decode([piece]).strip() for piece in row[start:stop]]
                for row, (start, stop) in zip(tokens.tolist(), self.text_spans(tokens), strict=True)]

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        return [len(self.tokenizer(text)["input_ids"]) > self.context_length for text in texts]

    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        patch = pair(self.model.config.vision_config.patch_size)
        return images.shape[-2] // patch[0], images.shape[-1] // patch[1]

