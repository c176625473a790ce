"""What every image-text adapter does the same way, whatever its library: the scored pass of both towers.

The score of image i for text t is ``logits_per_image[i, t] = s * cos(image_emb_i,
text_emb_t) (+ b)`` (docs/METHODS.md): ``s`` the logit scale, ``b`` a bias
(SigLIP's; a constant, so no map depends on it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from heatmap.models.base import AdapterBase
from heatmap.models.protocols import Grid, Scored, Spans, TowerScores


class ImageTextBase(AdapterBase):
    """The library-independent half of an image-text adapter.

    A subclass sets ``model``, ``name``, ``transform``, ``vision`` and ``text``
    (towers with ``query(batch, num_tokens)``), and implements the hooks below.

    Attributes:
        independent_texts: whether the model scores each image-text pair on its
            own (SigLIP's sigmoid) rather than as a softmax over the texts (CLIP).
    """

    labels: list[str] | None = None
    independent_texts: bool = False
    name: str
    vision: Any
    text: Any

    # -- the hooks -----------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """``LongTensor [T, context_length]`` on the model's device."""
        raise NotImplementedError

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, E]``, each image's unit embedding."""
        raise NotImplementedError

    def text_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[T, E]``, each text's unit embedding."""
        raise NotImplementedError

    def text_pool_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[T]``: where the text tower pools each text (its query row)."""
        raise NotImplementedError

    def text_spans(self, tokens: torch.Tensor) -> list[tuple[int, int]]:
        """Per text, the positions ``[start, stop)`` of its word pieces."""
        raise NotImplementedError

    def word_pieces(self, tokens: torch.Tensor) -> list[list[str]]:
        """Per text, its word pieces (the tokens of :meth:`text_spans`) as text."""
        raise NotImplementedError

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """Per text, whether it is longer than the model's context (the tokenizer cuts it)."""
        raise NotImplementedError

    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        """``(gh, gw)`` of the image tower for this input size."""
        raise NotImplementedError

    @property
    def logit_scale(self) -> torch.Tensor:
        """``s``, the scale of the cosine in the score: ``exp`` of the model's ``logit_scale`` (open_clip and
        transformers both keep it so)."""
        scale: torch.Tensor = self.model.logit_scale.exp()
        return scale

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """``b``, added to every score (SigLIP's ``logit_bias``), or None."""
        return getattr(self.model, "logit_bias", None)

    # -- shared ------------------------------------------------------------------------

    def label(self, index: int) -> str | None:
        return None

    @property
    def towers(self) -> tuple[Any, Any]:
        return (self.vision, self.text)

    def embeddings(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unit embeddings ``[B, E]`` and ``[T, E]``: each image's vision forward runs once for all texts."""
        return self.image_embeddings(images), self.text_embeddings(tokens)

    def score(self, image_embedding: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        """``logits_per_image [B, T]`` of unit embeddings."""
        logits = self.logit_scale * image_embedding @ text_embedding.T
        bias = self.logit_bias
        return logits if bias is None else logits + bias

    def score_texts(self, images: torch.Tensor, texts: Sequence[str]) -> Scored:
        """Both towers forward once, every image-text score, and what each tower's explanation reads.

        The image tower is explained per text (its objectives sum each text's
        scores over the images), the text tower per image. The LRP pass of
        either starts from the score's gradient with respect to the tower's
        unit embedding: ``s`` times the other tower's unit embedding
        (docs/METHODS.md).
        """
        tokens = self.tokenize(texts)
        image_embedding, text_embedding = self.embeddings(images, tokens)
        logits = self.score(image_embedding, text_embedding)
        batch, count = logits.shape
        scale = self.logit_scale.detach()
        toward_text, toward_image = scale * text_embedding.detach(), scale * image_embedding.detach()
        height, width = self.grid(images)
        image_side = TowerScores(
            self.vision, objectives=logits.sum(dim=0),
            lrp_targets=[toward_text[t].expand(batch, -1) for t in range(count)],
            query=self.vision.query(batch, self.vision.num_prefix_tokens + height * width),
            readout=Grid(self.vision.num_prefix_tokens, height, width),
            # a block's score is its unit embedding's cosine with the unit text embedding (no logit scale)
            readout_weights=[text_embedding.detach()[t].expand(batch, -1) for t in range(count)])
        text_query = torch.zeros(count, tokens.shape[1], dtype=torch.float64)
        text_query[torch.arange(count), self.text_pool_positions(tokens).cpu()] = 1.0
        text_side = TowerScores(
            self.text, objectives=logits.sum(dim=1),
            lrp_targets=[toward_image[b].expand(count, -1) for b in range(batch)],
            query=text_query, readout=Spans(self.text_spans(tokens)))
        targets = torch.arange(count).expand(batch, count)
        labels: list[list[str | None]] = [list(texts) for _ in range(batch)]
        return Scored(scores=logits, targets=targets, labels=labels, towers=[image_side, text_side],
                      word_pieces=self.word_pieces(tokens.cpu()))
