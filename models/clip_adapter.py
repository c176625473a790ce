"""The adapter for open_clip CLIP models: an image tower, a text tower, a score.

The score of image i for text t is ``logits_per_image[i, t] = logit_scale *
cos(image_emb_i, text_emb_t)`` (docs/METHODS.md). Both towers are seen through
the same small interface the explainers use for a timm ViT (:class:`Tower`),
so every method runs unchanged on either.

Supported: open_clip ``CLIP`` / ``CustomTextCLIP`` whose towers are open_clip's
``VisionTransformer`` and ``TextTransformer`` built from the default residual
blocks (``nn.MultiheadAttention``), class-token or mean pooling in the image
tower, end-of-text (argmax) pooling in the text tower, CLIP's byte-pair
tokenizer. Anything else is refused with the reason.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from PIL import Image
from torch import nn

from heatmap.errors import HeatmapError
from heatmap.models.geometry import crop_box


@dataclass
class Tower:
    """One tower's structure, as the methods need it.

    Attributes:
        attention_modules: each block's ``nn.MultiheadAttention``, in forward order.
        num_prefix_tokens: tokens before the patches (image: the class token; text: 0).
        class_token_index: the pooled class token, or None (mean pooling; text).
        module: the tower (``visual``; the text tower's holder: the CLIP itself
            or its ``text``).
        kind: ``"image"`` or ``"text"``.
        name: the model's name, for messages.
    """

    attention_modules: list[nn.Module]
    num_prefix_tokens: int
    class_token_index: int | None
    module: nn.Module
    kind: str
    name: str

    @property
    def num_blocks(self) -> int:
        return len(self.attention_modules)

    def lrp_view(self):
        """The structure transformer-attribution's LRP pass reads (:mod:`heatmap.models.clip_lrp`).

        Raises:
            HeatmapError: naming the first operation the LRP rules do not cover.
        """
        from heatmap.models.clip_lrp import clip_lrp_view
        return clip_lrp_view(self.module, self.kind, self.name)


class ClipAdapter:
    """An open_clip CLIP seen through the seams the explainers use.

    Args:
        model: an open_clip ``CLIP`` (or ``CustomTextCLIP``), put in eval mode here.
        name: how the user named it (messages, manifest).
        tokenizer: texts -> ``LongTensor [T, context_length]`` (open_clip's).
        preprocess: the model's eval image transform (PIL -> tensor).
    """

    def __init__(self, model: nn.Module, name: str, tokenizer: Callable, preprocess: Callable) -> None:
        self.model = model.eval()
        self.name = name
        self.tokenizer = tokenizer
        self.transform = preprocess
        self.text_tower_module = model.text if hasattr(model, "text") else model
        visual = model.visual
        self._check_supported(visual)
        pool = getattr(visual, "pool_type", "tok")
        self.vision = Tower([block.attn for block in visual.transformer.resblocks],
                            num_prefix_tokens=1 if getattr(visual, "class_embedding", None) is not None else 0,
                            class_token_index=0 if pool == "tok" else None, module=visual, kind="image", name=name)
        self.text = Tower([block.attn for block in self.text_tower_module.transformer.resblocks],
                          num_prefix_tokens=0, class_token_index=None, module=self.text_tower_module, kind="text",
                          name=name)

    def _check_supported(self, visual: nn.Module) -> None:
        problems = []
        if type(visual).__name__ != "VisionTransformer" or not hasattr(visual, "transformer"):
            problems.append(f"image tower {type(visual).__name__} (only ViT image towers have attention maps)")
        elif getattr(visual, "attn_pool", None) is not None:
            problems.append("an attention-pool image head")
        elif getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
            problems.append(f"image pooling {visual.pool_type!r}")
        text = self.text_tower_module
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
            raise HeatmapError(f"{self.name}: not supported: {'; '.join(problems)}")

    # -- data ----------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights."""
        return next(self.model.parameters()).dtype

    def converted(self, dtype: torch.dtype) -> "ClipAdapter":
        """This adapter when the model is in ``dtype`` already, else one over a converted copy.

        The caller's model is never changed; the copy costs the model's size once per run.
        """
        if dtype == self.dtype:
            return self
        return ClipAdapter(copy.deepcopy(self.model).to(dtype), self.name, self.tokenizer, self.transform)

    def preprocess(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, list[tuple[float, float, float, float]]]:
        """The model's own eval transform; see ``TimmAdapter.preprocess``."""
        param = next(self.model.parameters())
        tensor = torch.stack([self.transform(image) for image in images])
        boxes = [crop_box(self.transform, image.size) for image in images]
        return tensor.to(device=param.device, dtype=param.dtype), boxes

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """``LongTensor [T, context_length]`` on the model's device."""
        return self.tokenizer(list(texts)).to(self.device)

    def word_pieces(self, tokens: torch.Tensor) -> list[list[str]]:
        """Per text, the word pieces between the start and end-of-text tokens."""
        decoder = getattr(self.tokenizer, "decoder", None)
        pieces = []
        for row in tokens.tolist():
            end = max(range(len(row)), key=row.__getitem__)  # CLIP pools at the largest id, end-of-text
            pieces.append([decoder[i].replace("</w>", "") if decoder else str(i) for i in row[1:end]])
        return pieces

    # -- the score -----------------------------------------------------------

    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        """``(gh, gw)`` of the image tower, from its patch size and the input size."""
        # The tower's own patch size, not conv1's kernel: the demo CLIP embeds
        # its patches with a convolutional stem in conv1's place.
        patch = self.model.visual.patch_size
        return images.shape[-2] // patch[0], images.shape[-1] // patch[1]

    def query_weights(self, num_tokens: int) -> torch.Tensor:
        """Image tower: one-hot at the class token, or uniform over patches (mean pooling)."""
        weights = torch.zeros(num_tokens, dtype=torch.float64)  # cast to the relevance's dtype where used
        if self.vision.class_token_index is not None:
            weights[self.vision.class_token_index] = 1.0
        else:
            weights[self.vision.num_prefix_tokens:] = 1.0 / (num_tokens - self.vision.num_prefix_tokens)
        return weights

    def embeddings(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unit embeddings ``[B, E]`` and ``[T, E]``: each image's vision forward runs once for all texts."""
        return self.model.encode_image(images, normalize=True), self.model.encode_text(tokens, normalize=True)

    @property
    def logit_scale(self) -> torch.Tensor:
        """``s``, the scale of the cosine in the score."""
        return self.model.logit_scale.exp()

    def score(self, image_embedding: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        """``logits_per_image [B, T]`` of unit embeddings."""
        logits = self.logit_scale * image_embedding @ text_embedding.T
        if getattr(self.model, "logit_bias", None) is not None:
            logits = logits + self.model.logit_bias
        return logits

    def logits(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``logits_per_image [B, T]``."""
        return self.score(*self.embeddings(images, tokens))


def _text_pool_type(model: nn.Module, text: nn.Module) -> str:
    # CLIP keeps it as text_pool_type; CustomTextCLIP's TextTransformer as pool_type.
    if hasattr(text, "text_pool_type"):
        return text.text_pool_type
    if text is not model and hasattr(text, "pool_type"):
        return text.pool_type
    return getattr(model, "text_pool_type", "argmax")
