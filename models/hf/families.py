"""What differs between the transformers families: embeddings, pooling, heads and read-outs.

- :class:`ViTClassifierTower`: ``ViTForImageClassification`` and DeiT's two
  classifiers; pools the class token; DeiT's teacher variant averages the
  logits of a class-token head and a distillation-token head.
- :class:`ClipVisionTower`: ``CLIPModel``'s image tower; class token,
  ``post_layernorm``, ``visual_projection``.
- :class:`TextTower`: CLIP's and SigLIP's text towers; one pooled token, final
  norm, projection.
- :class:`SiglipVisionTower`: SigLIP's image tower, pooled by an attention
  head whose learned probe attends to every token. That head is explained as
  one more attention layer (docs/METHODS.md, "Modern ViT parts").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from heatmap.errors import UnsupportedModelError
from heatmap.models.attention_pool import PooledRecorder
from heatmap.models.capture import AttentionRecorder
from heatmap.models.hf.lrp import patch_convolution_problem
from heatmap.models.hf.tower import HfTower
from heatmap.models.multihead_attention import check_plain_multihead_attention, explicit_attention
from heatmap.models.protocols import HeadActivations

if TYPE_CHECKING:
    from heatmap.models.capture import ActivationCapture, Slot
    from heatmap.models.protocols import BlockActivations


def pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


class ImageTower(HfTower):
    """An image tower: a patch grid, a patch convolution in its embeddings, a random image to trace with."""

    embeddings: nn.Module

    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        """``(gh, gw)`` from the configured patch size and the input size."""
        patch = pair(self.config.patch_size)
        return images.shape[-2] // patch[0], images.shape[-1] // patch[1]

    def trace_input(self) -> dict[str, torch.Tensor]:
        height, width = pair(self.config.image_size)
        parameter = self._parameter()
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randn(1, 3, height, width, generator=generator)
        return {"pixel_values": pixels.to(device=parameter.device, dtype=parameter.dtype)}

    def patch_embedding(self) -> tuple[nn.Conv2d | None, str | None]:
        convolutions = [module for module in self.embeddings.modules() if isinstance(module, nn.Conv2d)]
        if len(convolutions) != 1:
            return None, (f"the patch embedding's {len(convolutions)} convolutions (a convolutional stem, not one "
                          "patch convolution with stride = kernel)")
        problem = patch_convolution_problem(convolutions[0]) or self._below_blocks_problem()
        return (None, problem) if problem else (convolutions[0], None)

    def _below_blocks_problem(self) -> str | None:
        """What sits between the embeddings and the first layer that the rules do not cover, or None."""
        return None

    def register_lrp_embedding(self, capture: ActivationCapture, slot: Slot) -> None:
        conv = self.patch_embedding()[0]
        assert conv is not None  # only called when there is one
        capture.hook(conv, slot, inputs="image")
        # [B, D, gh, gw] -> [B, G, D], row-major, as the embeddings flatten it
        capture.hook(conv, slot, output="patches", layout=lambda grid: grid.flatten(2).transpose(1, 2))
        # prefix tokens and patches after the position embedding (dropout: identity in eval mode)
        capture.hook(self.embeddings, slot, output="embedded")


class ViTClassifierTower(ImageTower):
    """The image tower of ``ViTForImageClassification``, ``DeiTForImageClassification(WithTeacher)``."""

    lrp_start: Literal["logit", "embedding"] = "logit"

    def __init__(self, model: Any, name: str) -> None:
        base = model.base_model
        super().__init__(model, base, "image", name)
        self.embeddings = base.embeddings
        norms = [child for child in base.children() if isinstance(child, nn.LayerNorm)]
        if len(norms) != 1:
            raise UnsupportedModelError(f"{name}: {type(base).__name__} has {len(norms)} final LayerNorms, not one")
        self.final_norm = norms[0]
        # the classification heads, in the order of the tokens they read: class token, then distillation token
        self.heads = [child for child in model.children() if isinstance(child, nn.Linear)]
        if not 1 <= len(self.heads) <= min(2, self.num_prefix_tokens):
            raise UnsupportedModelError(f"{name}: {len(self.heads)} Linear heads on {self.num_prefix_tokens} prefix "
                                        "tokens; a ViT classifier has one head per pooled token")

    @property
    def num_prefix_tokens(self) -> int:
        """The class token (and DeiT's distillation token): the positions beyond the patches."""
        embeddings: Any = self.embeddings
        return int(embeddings.position_embeddings.shape[1] - embeddings.patch_embeddings.num_patches)

    @property
    def class_token(self) -> int | None:
        return 0

    def block_readout(self, tokens: torch.Tensor) -> torch.Tensor:
        """The logits the heads make of a block's output tokens, after the final norm (docs/METHODS.md, legrad)."""
        normed = self.final_norm(tokens)
        logits: torch.Tensor = sum(head(normed[:, i]) for i, head in enumerate(self.heads)) / len(self.heads)
        return logits

    def lrp_problem(self) -> str | None:
        if len(self.heads) > 1:
            return f"the distillation head of {type(self.model).__name__} (logits averaged over two heads)"
        return None

    def head_weight(self) -> torch.Tensor | None:
        return self.heads[0].weight

    def register_lrp_head(self, capture: ActivationCapture, slot: Slot) -> None:
        capture.hook(self.heads[0], slot, inputs="pooled", output="output")
        capture.hook(self.final_norm, slot, output="tokens")

    def lrp_head_activations(self, slot: Slot, last_block: BlockActivations) -> HeadActivations:
        if "output" not in slot:
            raise UnsupportedModelError(f"{self.name}: the forward pass did not reach the head; no map can be made")
        return HeadActivations(slot["pooled"], slot["output"], token_index=torch.zeros(len(slot["pooled"]),
                               dtype=torch.long), selected=slot["tokens"][:, 0])


class ClipVisionTower(ImageTower):
    """The image tower of ``CLIPModel``: class token, ``post_layernorm`` on it, ``visual_projection``."""

    def __init__(self, model: Any, name: str) -> None:
        module = model.vision_model
        super().__init__(model, module, "image", name)
        self.embeddings = module.embeddings
        self.pre_norm = module.pre_layrnorm
        self.post_norm = module.post_layernorm
        self.projection = model.visual_projection

    @property
    def num_prefix_tokens(self) -> int:
        return 1

    @property
    def class_token(self) -> int | None:
        return 0

    def block_readout(self, tokens: torch.Tensor) -> torch.Tensor:
        """The unit embedding of a block's output: ``post_layernorm(mean of ALL tokens) @ projection``."""
        return F.normalize(self.projection(self.post_norm(tokens.mean(dim=1))), dim=-1)

    def lrp_problem(self) -> str | None:
        for where, module, kind in (("post_layernorm", self.post_norm, nn.LayerNorm),
                                    ("visual_projection", self.projection, nn.Linear)):
            if not isinstance(module, kind):
                return f"the image tower's {where} {type(module).__name__}"
        return None

    def _below_blocks_problem(self) -> str | None:
        return None if isinstance(self.pre_norm, (nn.LayerNorm, nn.Identity)) else \
            f"pre_layrnorm {type(self.pre_norm).__name__}"

    def head_weight(self) -> torch.Tensor | None:
        weight: torch.Tensor = self.projection.weight
        return weight

    def register_lrp_head(self, capture: ActivationCapture, slot: Slot) -> None:
        capture.hook(self.projection, slot, inputs="pooled", output="output")

    def lrp_head_activations(self, slot: Slot, last_block: BlockActivations) -> HeadActivations:
        if "output" not in slot:
            raise UnsupportedModelError(f"{self.name}: the forward pass did not reach the projection")
        # the class token is selected from the last block's output, then normed (identity) and projected
        return HeadActivations(slot["pooled"], slot["output"], token_index=torch.zeros(len(slot["pooled"]),
                               dtype=torch.long), selected=last_block.output[:, 0])


class TextTower(HfTower):
    """A text tower: tokens, a final norm, one pooled token per text, a projection.

    Args:
        model: the whole model.
        projection: the Linear from the pooled token to the embedding.
        pool_positions: token ids ``[T, L]`` -> ``[T]``, where the model pools each text.
        name: the model's name.
    """

    def __init__(self, model: Any, projection: Any, pool_positions: Callable[[torch.Tensor], torch.Tensor],
                 name: str) -> None:
        module = model.text_model
        super().__init__(model, module, "text", name)
        self.final_norm = module.final_layer_norm
        self.projection = projection
        self.pool_positions = pool_positions
        self.token_embedding = module.embeddings.token_embedding

    def trace_input(self) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        length = int(self.config.max_position_embeddings)
        ids = torch.randint(0, int(self.config.vocab_size), (1, length), generator=generator)
        return {"input_ids": ids.to(self._parameter().device)}

    def lrp_problem(self) -> str | None:
        if not isinstance(self.final_norm, nn.LayerNorm):
            return f"the text tower's final norm {type(self.final_norm).__name__}"
        if not isinstance(self.projection, nn.Linear):
            return f"the text projection {type(self.projection).__name__}"
        return None

    def head_weight(self) -> torch.Tensor | None:
        weight: torch.Tensor = self.projection.weight
        return weight

    def register_lrp_head(self, capture: ActivationCapture, slot: Slot) -> None:
        capture.hook(self.final_norm, slot, output="normed")
        capture.hook(self.token_embedding, slot, inputs="text")  # the ids, to find each text's pooled token

    def lrp_head_activations(self, slot: Slot, last_block: BlockActivations) -> HeadActivations:
        if "normed" not in slot:
            raise UnsupportedModelError(f"{self.name}: the forward pass did not reach the text tower's final norm")
        normed = slot["normed"]
        token_index = self.pool_positions(slot["text"].long()).cpu()
        pooled = normed[torch.arange(len(normed)), token_index.to(normed.device)]
        bias = self.projection.bias.detach() if self.projection.bias is not None else None
        output = F.linear(pooled, self.projection.weight.detach(), bias)
        return HeadActivations(pooled, output, token_index=token_index, selected=pooled)


class SiglipVisionTower(ImageTower):
    """SigLIP's image tower, whose attention-pooling head is one more attention layer (docs/METHODS.md, "Modern
    ViT parts"; the rule itself is :mod:`heatmap.models.attention_pool`, shared with timm and open_clip).

    The LRP rules do not cover the head, so those methods are refused.
    """

    def __init__(self, model: Any, name: str) -> None:
        module = model.vision_model
        super().__init__(model, module, "image", name)
        self.embeddings = module.embeddings
        self.post_norm = module.post_layernorm
        head = getattr(module, "head", None) if getattr(module, "use_head", True) else None
        pool = getattr(head, "attention", None)
        if not isinstance(pool, nn.MultiheadAttention):
            raise UnsupportedModelError(f"{name}: a SigLIP image tower without its attention-pooling head "
                                        "(nn.MultiheadAttention) is not supported")
        check_plain_multihead_attention(pool, f"{name}: the attention-pooling head")
        self.head = head
        self.pool_attention = pool

    @property
    def num_blocks(self) -> int:
        return len(self.layers) + 1

    @property
    def num_prefix_tokens(self) -> int:
        return 1

    @property
    def class_token(self) -> int | None:
        return 0

    fused_attention = False  # the attention-pool head's layer is recorded eagerly, in a PooledRecorder

    def new_recorder(self, track_from: int | None) -> AttentionRecorder:
        return PooledRecorder(len(self.layers), track_from, self.name)

    @contextmanager
    def attention_capture(self, track_from: int | None, fused: bool = False) -> Iterator[AttentionRecorder]:
        with super().attention_capture(track_from) as recorder:
            assert isinstance(recorder, PooledRecorder)
            # PyTorch's module never forms per-head probabilities in the graph: for the duration of the
            # capture it is computed explicitly with its own weights, then the module is restored
            with explicit_attention(self.pool_attention, recorder.record_head):
                yield recorder

    def block_readout(self, tokens: torch.Tensor) -> torch.Tensor:
        """The unit image embedding of a block's output through the whole read-out: ``post_layernorm``, then
        the attention-pooling head with its MLP (docs/METHODS.md, "Modern ViT parts", legrad)."""
        head: Any = self.head
        return F.normalize(head(self.post_norm(tokens)), dim=-1)

    def block_readout_problem(self) -> str | None:
        return None

    def lrp_problem(self) -> str | None:
        return f"the attention-pooling head {type(self.pool_attention).__name__} of SigLIP's image tower"

    def head_weight(self) -> torch.Tensor | None:
        raise UnsupportedModelError(f"{self.name}: {self.lrp_problem()} is not covered by the LRP rules")
