"""The LRP view of a timm ViT classifier (see :class:`heatmap.models.protocols.LrpView`).

Only the structure the rules of docs/METHODS.md were written for is accepted
(timm's plain ``Block``, ``Attention`` and ``Mlp``, class-token or mean
pooling, a Linear head); anything else is named, so that the user sees what
is missing instead of a map made with the wrong rules.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from timm.layers import DropPath, LayerScale, Mlp, PatchEmbed
from timm.layers.activations import GELU, GELUTanh, QuickGELU
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import nn

from heatmap.errors import UnsupportedModelError
from heatmap.models.capture import ActivationCapture, Slot
from heatmap.models.protocols import (
    BlockActivations,
    BlockWeights,
    EmbeddingActivations,
    HeadActivations,
    LrpView,
    PatchEmbedding,
)

# Operations that pass relevance through unchanged (METHODS.md). Dropout and
# drop-path are identities because the model runs in eval mode.
NORMS = (nn.LayerNorm, nn.Identity)
ACTIVATIONS = (nn.GELU, GELU, GELUTanh, QuickGELU)
DROPOUTS = (nn.Dropout, nn.Identity)
DROP_PATHS = (DropPath, nn.Identity)
LAYER_SCALES = (LayerScale, nn.Identity)
POOLS = ("token", "avg")
# timm's MLPs that multiply two branches (SwiGLU, GeGLU): the LRP rules do not cover the product
GATED_MLPS = ("SwiGLU", "SwiGLUPacked", "GluMlp")


def unsupported_operation(model: Any, classifier: bool = True) -> str | None:
    """The first operation of ``model`` that the LRP rules of METHODS.md do not cover, or None.

    ``classifier=False``: a trunk whose read-out is someone else's (an open_clip
    tower's), so its own head (an Identity) is not asked to be a Linear classifier.
    """
    # the parts docs/METHODS.md ("Modern ViT parts") names as not covered by the LRP rules, named first
    if getattr(model, "attn_pool", None) is not None:
        return f"the attention-pool head attn_pool ({type(model.attn_pool).__name__})"
    if getattr(model, "rope", None) is not None:
        return f"RoPE, the rotary position embedding on q and k ({type(model.rope).__name__})"
    gated = next((type(block.mlp).__name__ for block in model.blocks
                  if type(getattr(block, "mlp", None)).__name__ in GATED_MLPS), None)
    if gated:
        return f"the gated MLP {gated} (a product of two branches)"
    if type(model) is not VisionTransformer:
        if isinstance(model, VisionTransformer) and hasattr(model, "head_dist"):
            return f"the distillation head of {type(model).__name__} (logits averaged over two heads)"
        return f"the model class {type(model).__name__} (only timm's VisionTransformer is)"
    if model.global_pool not in POOLS:
        return f"global pooling {model.global_pool!r}"
    if model.global_pool == "token" and not model.has_class_token:
        return "token pooling without a class token"
    if model.grad_checkpointing:
        return "gradient checkpointing (it re-runs blocks during the backward pass)"
    for where, module, allowed in (("the final norm", model.norm, NORMS), ("fc_norm", model.fc_norm, NORMS),
                                   ("head_drop", model.head_drop, DROPOUTS)):
        if not isinstance(module, allowed):
            return f"{where} {type(module).__name__}"
    if classifier and type(model.head) is not nn.Linear:
        return f"the head {type(model.head).__name__} (a Linear classifier is needed)"
    for index, block in enumerate(model.blocks):
        problem = _unsupported_in_block(block)
        if problem:
            return f"block {index}: {problem}"
    return None


def _unsupported_in_block(block: Any) -> str | None:
    if type(block) is not Block:
        return f"the block type {type(block).__name__}"
    attn, mlp = block.attn, block.mlp
    if type(attn) is not Attention:
        return f"the attention type {type(attn).__name__}"
    if type(mlp) is not Mlp:
        return f"the MLP type {type(mlp).__name__}"
    checks = [
        ("norm1", block.norm1, NORMS), ("norm2", block.norm2, NORMS),
        ("ls1", block.ls1, LAYER_SCALES), ("ls2", block.ls2, LAYER_SCALES),
        ("drop_path1", block.drop_path1, DROP_PATHS), ("drop_path2", block.drop_path2, DROP_PATHS),
        ("attn.attn_drop", attn.attn_drop, DROPOUTS), ("attn.proj_drop", attn.proj_drop, DROPOUTS),
        ("mlp.act", mlp.act, ACTIVATIONS),
        ("mlp.drop1", mlp.drop1, DROPOUTS), ("mlp.drop2", mlp.drop2, DROPOUTS),
    ]
    for where, module, allowed in checks:
        if not isinstance(module, allowed):
            return f"{where} {type(module).__name__}"
    # Norms inside attention and the MLP, and the gate, are not in the original
    # model the rules come from; refuse them rather than guess a rule.
    for where, module in (("attn.q_norm (QK normalisation)", attn.q_norm),
                          ("attn.k_norm (QK normalisation)", attn.k_norm),
                          ("attn.norm (attention output norm)", attn.norm),
                          ("mlp.norm (MLP hidden norm)", mlp.norm)):
        if not isinstance(module, nn.Identity):
            return f"{where} {type(module).__name__}"
    if getattr(attn, "gate", None) is not None:
        return "gated attention (attn.gate)"
    for where, module in (("attn.qkv", attn.qkv), ("attn.proj", attn.proj), ("mlp.fc1", mlp.fc1), ("mlp.fc2", mlp.fc2)):
        if type(module) is not nn.Linear:
            return f"{where} {type(module).__name__}"
    return None


def patch_embedding_problem(model: Any) -> str | None:
    """Why the pass cannot go on to the pixels of ``model``, or None (docs/METHODS.md, full-lrp).

    The rules cover one convolution with stride = kernel (the patch
    embedding), the position-embedding add and identities between them.
    """
    patch_embed = model.patch_embed
    proj = getattr(patch_embed, "proj", None)
    if isinstance(patch_embed, PatchEmbed) and type(proj) is not nn.Conv2d:
        return (f"the patch projection {type(proj).__name__} (a convolutional stem, not one patch convolution "
                "with stride = kernel)")
    if type(patch_embed) is not PatchEmbed:
        return f"the patch embedding {type(patch_embed).__name__} (timm's PatchEmbed is needed)"
    assert isinstance(proj, nn.Conv2d)
    if (proj.kernel_size != proj.stride or proj.padding != (0, 0) or proj.dilation != (1, 1)
            or proj.groups != 1 or proj.in_channels != 3):
        return "a patch convolution other than a 3-channel one with stride = kernel and no padding"
    for where, module in (("patch_embed.norm", patch_embed.norm), ("norm_pre", model.norm_pre)):
        if not isinstance(module, NORMS):
            return f"{where} {type(module).__name__}"
    return None


def check_supported(model: nn.Module, name: str) -> None:
    """Raise :class:`UnsupportedModelError` naming the first operation the LRP rules do not cover."""
    problem = unsupported_operation(model)
    if problem:
        raise UnsupportedModelError(f"{name}: {problem} is not covered by the LRP rules")


class TimmCapture(ActivationCapture):
    """The activations of a supported timm ``VisionTransformer``'s forward pass."""

    def __init__(self, model: VisionTransformer, first_block: int = 0, name: str = "model") -> None:
        super().__init__(list(model.blocks), first_block, name)
        self.model = model

    def register_block(self, block: Block, slot: Slot) -> None:
        self.hook(block.norm1, slot, inputs="block_input", output="attn_input")
        self.hook(block.attn.qkv, slot, output="qkv")
        self.hook(block.attn.proj, slot, inputs="proj_input")
        # drop_path is the identity in eval mode; its output is what the add adds
        self.hook(block.drop_path1, slot, output="attn_branch")
        self.hook(block.norm2, slot, inputs="mid", output="mlp_input")
        self.hook(block.mlp.fc2, slot, inputs="fc2_input")
        self.hook(block.drop_path2, slot, output="mlp_branch")

    def register_head(self, slot: Slot) -> None:
        self.hook(self.model.head, slot, inputs="pooled", output="output")
        self.hook(self.model.norm, slot, output="tokens")

    def register_embedding(self, slot: Slot) -> None:
        if patch_embedding_problem(self.model) is not None:
            return
        self.hook(self.model.patch_embed.proj, slot, inputs="image")
        # [B, G, D] whatever the output format (flattened, or NHWC for dynamic sizes)
        self.hook(self.model.patch_embed, slot, output="patches",
                  layout=lambda tokens: tokens.reshape(len(tokens), -1, tokens.shape[-1]))
        # the tokens after the position embedding (position dropout and patch dropout: identity in eval mode)
        self.hook(self.model.norm_pre, slot, inputs="embedded")

    def embedding_activations(self, slot: Slot) -> EmbeddingActivations | None:
        return EmbeddingActivations(**slot) if len(slot) == 3 else None

    def head_activations(self, slot: Slot, last_block: BlockActivations) -> HeadActivations:
        if "output" not in slot:
            raise UnsupportedModelError(f"{self.name}: the forward pass did not reach the head; no map can be made")
        if self.model.global_pool == "token":  # the class token, first of the prefix tokens, after the norm
            return HeadActivations(slot["pooled"], slot["output"],
                                   token_index=torch.zeros(len(slot["pooled"]), dtype=torch.long),
                                   selected=slot["tokens"][:, 0])
        first = 0 if self.model.pool_include_prefix else self.model.num_prefix_tokens
        return HeadActivations(slot["pooled"], slot["output"], pooled_tokens=slot["tokens"][:, first:],
                               pooled_from=first)


def timm_lrp_view(model: VisionTransformer, name: str) -> LrpView:
    """The LRP view of ``model``; raises :class:`UnsupportedModelError` for an unsupported structure."""
    check_supported(model, name)
    blocks = [BlockWeights(block.attn.qkv.weight, block.attn.proj.weight, block.mlp.fc1.weight,
                           block.mlp.fc2.weight, block.attn.num_heads) for block in model.blocks]
    pooling: Literal["token", "mean"] = "token" if model.global_pool == "token" else "mean"
    problem = patch_embedding_problem(model)
    proj = model.patch_embed.proj
    embedding = None if problem else PatchEmbedding(proj.weight, tuple(proj.stride))
    return LrpView(blocks, model.head.weight, pooling, start="logit",
                   capture=lambda first_block: TimmCapture(model, first_block, name),
                   embedding=embedding, embedding_problem=problem)
