"""The adapter for open_clip CLIP models: an image tower, a text tower, a score.

The score of image i for text t is ``logits_per_image[i, t] = logit_scale *
cos(image_emb_i, text_emb_t)`` (docs/METHODS.md). Both towers are seen
through the driver's :class:`~heatmap.models.protocols.Tower`, so every
method runs unchanged on either.

Supported: open_clip ``CLIP`` / ``CustomTextCLIP`` whose image tower is
open_clip's ``VisionTransformer`` (class-token or mean pooling) or a timm ViT
trunk (``TimmModel``: SigLIP, EVA02-CLIP, PE-Core, ...; see
:mod:`heatmap.models.open_clip.timm_tower`) and whose text tower is open_clip's
``TextTransformer``, blocks built from the default residual blocks
(``nn.MultiheadAttention``). The text tower may pool at the largest token id (``argmax``, CLIP), the
first end-of-text token (``eos``, MetaCLIP 2), the last position (``last``,
SigLIP) or the first (``first``); its tokenizer is CLIP's byte-pair one or
open_clip's ``HFTokenizer`` (a transformers tokenizer). The query row and the
word pieces follow one rule (:mod:`heatmap.models.open_clip.text`). Anything
else (an appended class token, pooling ``none``) is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image
from torch import nn

from heatmap.errors import UnsupportedModelError
from heatmap.models.base import query_weights
from heatmap.models.capture import AttentionRecorder
from heatmap.models.image_text import ImageTextBase
from heatmap.models.open_clip import text as text_rule
from heatmap.models.open_clip.attention import multihead_attention_capture, token_layout
from heatmap.models.open_clip.timm_tower import TimmTrunkTower, timm_tower_problem
from heatmap.models.protocols import LrpView, TowerKind


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
        return query_weights(batch, num_tokens, self.class_token, self.num_prefix_tokens)

    @contextmanager
    def attention_capture(self, track_from: int | None, fused: bool = False) -> Iterator[AttentionRecorder]:
        """Each block's probabilities (the explicit attention path, or the fused kernel with the probabilities
        recomputed) and, when tracked, its output tokens."""
        layout = token_layout(getattr(self.module.transformer, "batch_first", False))
        with multihead_attention_capture(self.attention_modules, track_from, self.name, fused) as recorder:
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

    def block_readout_problem(self) -> str | None:
        return None if self.kind == "image" else "the text tower has no block read-out"

    def lrp_view(self) -> LrpView:
        from heatmap.models.open_clip.lrp import clip_lrp_view

        return clip_lrp_view(self.module, self.kind, self.name)


class ClipAdapter(ImageTextBase):
    """An open_clip CLIP seen through the seams the driver uses.

    Args:
        model: an open_clip ``CLIP`` (or ``CustomTextCLIP``), put in eval mode here.
        name: how the user named it (messages, manifest).
        tokenizer: texts -> ``LongTensor [T, context_length]`` (open_clip's).
        preprocess: the model's eval image transform (PIL -> tensor).
    """

    def __init__(self, model: Any, name: str, tokenizer: Callable[[list[str]], torch.Tensor],
                 preprocess: Callable[[Image.Image], torch.Tensor]) -> None:
        self.model = model.eval()
        self.name = name
        self.tokenizer = tokenizer
        self.transform = preprocess
        text_holder = model.text if hasattr(model, "text") else model
        self._check_supported(model.visual, text_holder)
        self.vision: ClipTower | TimmTrunkTower = (TimmTrunkTower(model.visual, name) if _is_timm_tower(model.visual)
                                                   else ClipTower(model.visual, "image", name))
        self.text = ClipTower(text_holder, "text", name)
        self.pooling = text_rule.text_pooling(text_holder)
        # SigLIP-style models (a logit bias) score each pair with its own sigmoid, not a softmax over the texts
        self.independent_texts = getattr(model, "logit_bias", None) is not None

    def _check_supported(self, visual: nn.Module, text: nn.Module) -> None:
        problems = []
        if _is_timm_tower(visual):
            if problem := timm_tower_problem(visual):
                problems.append(problem)
        elif type(visual).__name__ != "VisionTransformer" or not hasattr(visual, "transformer"):
            problems.append(f"image tower {type(visual).__name__} (only ViT image towers have attention maps)")
        elif getattr(visual, "attn_pool", None) is not None:
            problems.append("an attention-pool image head")
        elif getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
            problems.append(f"image pooling {visual.pool_type!r}")
        if not hasattr(text, "transformer") or not hasattr(text.transformer, "resblocks"):
            problems.append(f"text tower {type(text).__name__} (only open_clip's own text transformer)")
        elif pooling := text_rule.pooling_problem(text):
            problems.append(pooling)
        if tokenizer := text_rule.tokenizer_problem(self.tokenizer):
            problems.append(tokenizer)
        for tower_name, blocks in (("image", getattr(getattr(visual, "transformer", None), "resblocks", [])),
                                   ("text", getattr(getattr(text, "transformer", None), "resblocks", []))):
            for block in blocks:
                if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
                    problems.append(f"{tower_name} blocks of type {type(block).__name__} "
                                    f"(attention {type(getattr(block, 'attn', None)).__name__})")
                    break
        if problems:
            raise UnsupportedModelError(f"{self.name}: not supported: {'; '.join(problems)}")

    def rebuilt(self, model: Any) -> ClipAdapter:
        return ClipAdapter(model, self.name, self.tokenizer, self.transform)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        embedding: torch.Tensor = self.model.encode_image(images, normalize=True)
        return embedding

    def text_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        embedding: torch.Tensor = self.model.encode_text(tokens, normalize=True)
        return embedding

    def text_pool_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.pooling.positions(tokens)

    def text_spans(self, tokens: torch.Tensor) -> list[tuple[int, int]]:
        """From after the start token (if any) to the first end-of-text or padding token."""
        return text_rule.word_spans(self.tokenizer, tokens)

    def word_pieces(self, tokens: torch.Tensor) -> list[list[str]]:
        return [text_rule.word_pieces(self.tokenizer, row[start:stop])
                for row, (start, stop) in zip(tokens.tolist(), self.text_spans(tokens), strict=True)]

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        return text_rule.truncated(self.tokenizer, texts)

    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        if isinstance(self.vision, TimmTrunkTower):
            return self.vision.grid(images)
        # The tower's own patch size, not conv1's kernel: the demo CLIP embeds
        # its patches with a convolutional stem in conv1's place.
        patch = self.model.visual.patch_size
        return images.shape[-2] // patch[0], images.shape[-1] // patch[1]


def _is_timm_tower(visual: Any) -> bool:
    """open_clip's ``TimmModel``: a timm trunk and open_clip's projection head."""
    return type(visual).__name__ == "TimmModel" and hasattr(visual, "trunk")
