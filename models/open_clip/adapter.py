"""The adapter for open_clip CLIP models: an image tower, a text tower, a score.

The score of image i for text t is ``logits_per_image[i, t] = logit_scale *
cos(image_emb_i, text_emb_t)`` (docs/METHODS.md). Both towers are seen
through the driver's :class:`~heatmap.models.protocols.Tower`, so every
method runs unchanged on either.

Supported: open_clip ``CLIP`` / ``CustomTextCLIP`` whose towers are open_clip's
``VisionTransformer`` and ``TextTransformer`` built from the default residual
blocks (``nn.MultiheadAttention``), class-token or mean pooling in the image
tower, end-of-text (argmax) pooling in the text tower, CLIP's byte-pair
tokenizer. Anything else is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image
from torch import nn

from heatmap.errors import UnsupportedModelError
from heatmap.models.base import AdapterBase
from heatmap.models.capture import AttentionRecorder
from heatmap.models.open_clip.attention import multihead_attention_capture, token_layout
from heatmap.models.open_clip.text import decoded_pieces, end_of_text
from heatmap.models.protocols import Grid, LrpView, Scored, Spans, TowerKind, TowerScores


class ClipTower:
    """One tower of an open_clip CLIP.

    Args:
        module: the tower (``visual``; for the text tower the module that holds
            it: the CLIP itself or its ``text``).
        kind: ``"image"`` or ``"text"``.
        name: the model's name, for messages.
    """

    def __init__(self, module: Any, kind: TowerKind, name: str) -> None:
        self.module = module
        self.kind: TowerKind = kind
        self.name = name
        self.attention_modules = [block.attn for block in module.transformer.resblocks]

    @property
    def num_blocks(self) -> int:
        return len(self.attention_modules)

    @property
    def num_prefix_tokens(self) -> int:
        """The image tower's class token (when it has one); the text tower has none."""
        if self.kind == "text":
            return 0
        return 1 if getattr(self.module, "class_embedding", None) is not None else 0

    @property
    def class_token(self) -> int | None:
        if self.kind == "text" or getattr(self.module, "pool_type", "tok") != "tok":
            return None
        return 0

    def query(self, batch: int, num_tokens: int) -> torch.Tensor:
        """Image tower ``[B, N]``: one-hot at the class token, or uniform over the patches (mean pooling)."""
        weights = torch.zeros(num_tokens, dtype=torch.float64)  # cast to the relevance's dtype where used
        if self.class_token is not None:
            weights[self.class_token] = 1.0
        else:
            weights[self.num_prefix_tokens:] = 1.0 / (num_tokens - self.num_prefix_tokens)
        return weights.expand(batch, num_tokens)

    @contextmanager
    def attention_capture(self, track_from: int | None) -> Iterator[AttentionRecorder]:
        """Each block's probabilities (the explicit attention path) and, when tracked, its output tokens."""
        layout = token_layout(getattr(self.module.transformer, "batch_first", False))
        with multihead_attention_capture(self.attention_modules, track_from, self.name) as recorder:
            handles = [block.register_forward_hook(
                lambda _module, _inputs, output, index=index: recorder.record_output(index, layout(output)))
                for index, block in enumerate(self.module.transformer.resblocks)]
            try:
                yield recorder
            finally:
                for handle in handles:
                    handle.remove()

    def block_readout(self, tokens: torch.Tensor) -> torch.Tensor:
        """The image tower's unit embedding of a block's output: ``ln_post(mean of ALL tokens) @ proj``.

        LeGrad's authors' rule (docs/METHODS.md, "legrad"): the mean over
        every token, the class token included, whatever the tower pools.
        """
        if self.kind != "image":
            raise UnsupportedModelError(f"{self.name}: the text tower has no block read-out")
        embedding = self.module.ln_post(tokens.mean(dim=1))
        projection = self.module.proj
        if isinstance(projection, nn.Linear):
            embedding = projection(embedding)
        elif projection is not None:
            embedding = embedding @ projection
        return torch.nn.functional.normalize(embedding, dim=-1)

    def lrp_view(self) -> LrpView:
        from heatmap.models.open_clip.lrp import clip_lrp_view

        return clip_lrp_view(self.module, self.kind, self.name)


class ClipAdapter(AdapterBase):
    """An open_clip CLIP seen through the seams the driver uses.

    Args:
        model: an open_clip ``CLIP`` (or ``CustomTextCLIP``), put in eval mode here.
        name: how the user named it (messages, manifest).
        tokenizer: texts -> ``LongTensor [T, context_length]`` (open_clip's).
        preprocess: the model's eval image transform (PIL -> tensor).
    """

    labels: list[str] | None = None

    def __init__(self, model: Any, name: str, tokenizer: Callable[[list[str]], torch.Tensor],
                 preprocess: Callable[[Image.Image], torch.Tensor]) -> None:
        self.model = model.eval()
        self.name = name
        self.tokenizer = tokenizer
        self.transform = preprocess
        text_holder = model.text if hasattr(model, "text") else model
        self._check_supported(model.visual, text_holder)
        self.vision = ClipTower(model.visual, "image", name)
        self.text = ClipTower(text_holder, "text", name)

    def _check_supported(self, visual: nn.Module, text: nn.Module) -> None:
        problems = []
        if type(visual).__name__ != "VisionTransformer" or not hasattr(visual, "transformer"):
            problems.append(f"image tower {type(visual).__name__} (only ViT image towers have attention maps)")
        elif getattr(visual, "attn_pool", None) is not None:
            problems.append("an attention-pool image head")
        elif getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
            problems.append(f"image pooling {visual.pool_type!r}")
        if not hasattr(text, "transformer") or not hasattr(text.transformer, "resblocks"):
            problems.append(f"text tower {type(text).__name__} (only open_clip's own text transformer)")
        elif _text_pool_type(self.model, text) != "argmax":
            problems.append("text pooling other than the end-of-text token")
        for tower_name, blocks in (("image", getattr(getattr(visual, "transformer", None), "resblocks", [])),
                                   ("text", getattr(getattr(text, "transformer", None), "resblocks", []))):
            for block in blocks:
                if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
                    problems.append(f"{tower_name} blocks of type {type(block).__name__} "
                                    f"(attention {type(getattr(block, 'attn', None)).__name__})")
                    break
        if problems:
            raise UnsupportedModelError(f"{self.name}: not supported: {'; '.join(problems)}")

    @property
    def towers(self) -> tuple[ClipTower, ClipTower]:
        return (self.vision, self.text)

    def rebuilt(self, model: Any) -> ClipAdapter:
        return ClipAdapter(model, self.name, self.tokenizer, self.transform)

    def label(self, index: int) -> str | None:
        return None

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """``LongTensor [T, context_length]`` on the model's device."""
        return self.tokenizer(list(texts)).to(self.device)

    def word_pieces(self, tokens: torch.Tensor) -> list[list[str]]:
        """Per text, the word pieces between the start and end-of-text tokens, as text."""
        ends = end_of_text(tokens).tolist()
        return [decoded_pieces(self.tokenizer, row[1:end]) for row, end in zip(tokens.tolist(), ends, strict=True)]

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """Per text, whether it is longer than the model's context (the tokenizer cuts it)."""
        encode = getattr(self.tokenizer, "encode", None)
        context = getattr(self.tokenizer, "context_length", None)
        if encode is None or context is None:
            return [False] * len(texts)
        return [len(encode(text)) + 2 > context for text in texts]  # + start and end-of-text

    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        """``(gh, gw)`` of the image tower, from its patch size and the input size."""
        # The tower's own patch size, not conv1's kernel: the demo CLIP embeds
        # its patches with a convolutional stem in conv1's place.
        patch = self.model.visual.patch_size
        return images.shape[-2] // patch[0], images.shape[-1] // patch[1]

    @property
    def logit_scale(self) -> torch.Tensor:
        """``s``, the scale of the cosine in the score."""
        scale: torch.Tensor = self.model.logit_scale.exp()
        return scale

    def embeddings(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unit embeddings ``[B, E]`` and ``[T, E]``: each image's vision forward runs once for all texts."""
        return self.model.encode_image(images, normalize=True), self.model.encode_text(tokens, normalize=True)

    def score(self, image_embedding: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        """``logits_per_image [B, T]`` of unit embeddings."""
        logits = self.logit_scale * image_embedding @ text_embedding.T
        if getattr(self.model, "logit_bias", None) is not None:
            logits = logits + self.model.logit_bias
        return logits

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
        ends = end_of_text(tokens)
        text_tokens = tokens.shape[1]
        image_side = TowerScores(
            self.vision, objectives=logits.sum(dim=0),
            lrp_targets=[toward_text[t].expand(batch, -1) for t in range(count)],
            query=self.vision.query(batch, self.vision.num_prefix_tokens + _cells(self.grid(images))),
            readout=Grid(self.vision.num_prefix_tokens, *self.grid(images)),
            # a block's score is its unit embedding's cosine with the unit text embedding (no logit scale)
            readout_weights=[text_embedding.detach()[t].expand(batch, -1) for t in range(count)])
        text_query = torch.zeros(count, text_tokens, dtype=torch.float64)
        text_query[torch.arange(count), ends.cpu()] = 1.0
        text_side = TowerScores(
            self.text, objectives=logits.sum(dim=1),
            lrp_targets=[toward_image[b].expand(count, -1) for b in range(batch)],
            query=text_query, readout=Spans([(1, int(end)) for end in ends.tolist()]))
        targets = torch.arange(count).expand(batch, count)
        labels: list[list[str | None]] = [list(texts) for _ in range(batch)]
        return Scored(scores=logits, targets=targets, labels=labels, towers=[image_side, text_side],
                      word_pieces=self.word_pieces(tokens.cpu()))


def _cells(grid: tuple[int, int]) -> int:
    return grid[0] * grid[1]


def _text_pool_type(model: Any, text: Any) -> str:
    # CLIP keeps it as text_pool_type; CustomTextCLIP's TextTransformer as pool_type.
    if hasattr(text, "text_pool_type"):
        return str(text.text_pool_type)
    if text is not model and hasattr(text, "pool_type"):
        return str(text.pool_type)
    return str(getattr(model, "text_pool_type", "argmax"))
