"""The LRP pass of transformer-attribution, for timm ``VisionTransformer`` classifiers.

docs/METHODS.md, "transformer-attribution" and "The LRP pass", is the contract:
relevance starts as the one-hot of the target logit and flows backwards through
the head, the pooling, the final norm and every block, down to the input of the
first block asked for. On its way through each block's ``O = A V`` it leaves
``RA_l``, the relevance of the attention probabilities, which
:mod:`heatmap.explainers.transformer_attribution` weights with the gradients.

The pass reads the activations of the forward pass being explained: an
:class:`ActivationCapture` records them with forward hooks during that same
forward (no second forward), keeping only what the rules read, in float32.
Every sum is over one image, so each image's relevance is independent of the
rest of the batch.

A model with an operation the rules do not cover is refused by
:func:`check_supported` before any work (METHODS.md: never a silent map).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp
from timm.layers.activations import GELU, GELUTanh, QuickGELU
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import nn

from heatmap.errors import HeatmapError

# Operations that pass relevance through unchanged (METHODS.md). Dropout and
# drop-path are identities because the model runs in eval mode.
NORMS = (nn.LayerNorm, nn.Identity)
ACTIVATIONS = (nn.GELU, GELU, GELUTanh, QuickGELU)
DROPOUTS = (nn.Dropout, nn.Identity)
DROP_PATHS = (DropPath, nn.Identity)
LAYER_SCALES = (LayerScale, nn.Identity)
POOLS = ("token", "avg")

ALTERNATIVES = "rollout, grad-rollout and chefer-generic work for this model"


# -- which models ------------------------------------------------------------

def unsupported_operation(model: nn.Module) -> str | None:
    """The first operation of ``model`` that the LRP rules of METHODS.md do not cover, or None.

    Only the structure the rules were written for is accepted (timm's plain
    ``Block``, ``Attention`` and ``Mlp``); anything else is named, so that the
    user sees what is missing instead of a map made with the wrong rules.
    """
    if type(model) is not VisionTransformer:
        if isinstance(model, VisionTransformer) and hasattr(model, "head_dist"):
            return f"the distillation head of {type(model).__name__} (logits averaged over two heads)"
        return f"the model class {type(model).__name__} (only timm's VisionTransformer is)"
    if getattr(model, "attn_pool", None) is not None:
        return f"the attention-pool head attn_pool ({type(model.attn_pool).__name__})"
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
    if type(model.head) is not nn.Linear:
        return f"the head {type(model.head).__name__} (a Linear classifier is needed)"
    for index, block in enumerate(model.blocks):
        problem = _unsupported_in_block(block)
        if problem:
            return f"block {index}: {problem}"
    return None


def _unsupported_in_block(block: nn.Module) -> str | None:
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


def check_supported(model: nn.Module, name: str) -> None:
    """Raise :class:`HeatmapError` naming the first operation the LRP rules do not cover."""
    problem = unsupported_operation(model)
    if problem:
        raise HeatmapError(f"{name}: {problem} is not supported for transformer-attribution; {ALTERNATIVES}")


# -- the activations of the explained forward pass ----------------------------

@dataclass
class BlockActivations:
    """What the rules read in one block, float32, as the forward pass computed it.

    Shapes: ``[B, N, D]`` unless noted; ``D'`` is the attention width, ``M`` the MLP width.
    """

    block_input: torch.Tensor  # x: the skip operand of the first residual add
    attn_input: torch.Tensor  # norm1(x): the input of qkv
    qkv: torch.Tensor  # [B, N, 3 D'], q k v of all heads
    proj_input: torch.Tensor  # [B, N, D'], the merged heads A V
    attn_branch: torch.Tensor  # the branch operand of the first add
    mid: torch.Tensor  # x after the first add: the skip operand of the second
    mlp_input: torch.Tensor  # norm2(mid): the input of fc1
    fc2_input: torch.Tensor  # [B, N, M]
    mlp_branch: torch.Tensor  # the branch operand of the second add


@dataclass
class Activations:
    """Everything the LRP pass reads, from one forward pass.

    Attributes:
        first_block: the lowest block recorded; the pass stops at its input.
        blocks: per block from ``first_block`` on.
        head_input: ``[B, D]``, the input of the head Linear.
        tokens: ``[B, N, D]``, the tokens a mean-pooling model averages
            (after the final norm); None for class-token pooling, which needs none.
    """

    first_block: int
    blocks: list[BlockActivations]
    head_input: torch.Tensor
    tokens: torch.Tensor | None


class ActivationCapture:
    """Records, during one forward pass, the activations the LRP rules read.

    Use it around the same forward pass that the :class:`AttentionProbe`
    records; the attention probabilities themselves come from the probe.

    Args:
        model: a supported ``VisionTransformer`` (see :func:`check_supported`).
        first_block: record blocks from this one on (the start layer: the
            pass never needs anything below it).
    """

    def __init__(self, model: VisionTransformer, first_block: int = 0) -> None:
        self.model = model
        self.first_block = first_block
        self._handles: list = []
        self._blocks: list[dict[str, torch.Tensor]] = []
        self._head: dict[str, torch.Tensor] = {}

    def __enter__(self) -> "ActivationCapture":
        self._blocks = [{} for _ in self.model.blocks[self.first_block:]]
        self._head = {}
        try:
            for slot, block in zip(self._blocks, self.model.blocks[self.first_block:]):
                self._hook(block.norm1, slot, inputs="block_input", output="attn_input")
                self._hook(block.attn.qkv, slot, output="qkv")
                self._hook(block.attn.proj, slot, inputs="proj_input")
                # drop_path is the identity in eval mode; its output is what the add adds
                self._hook(block.drop_path1, slot, output="attn_branch")
                self._hook(block.norm2, slot, inputs="mid", output="mlp_input")
                self._hook(block.mlp.fc2, slot, inputs="fc2_input")
                self._hook(block.drop_path2, slot, output="mlp_branch")
            self._hook(self.model.head, self._head, inputs="head_input")
            if self.model.global_pool == "avg":
                self._hook(self.model.norm, self._head, output="tokens")
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._remove()

    def activations(self) -> Activations:
        """The recorded activations; raises if the forward pass did not run through every hook."""
        names = BlockActivations.__dataclass_fields__.keys()
        if any(set(slot) != set(names) for slot in self._blocks) or "head_input" not in self._head:
            raise HeatmapError("transformer-attribution: the forward pass did not run through every "
                               "layer it records; no map can be made for this model")
        return Activations(self.first_block, [BlockActivations(**slot) for slot in self._blocks],
                           self._head["head_input"], self._head.get("tokens"))

    def _hook(self, module: nn.Module, slot: dict, inputs: str | None = None, output: str | None = None) -> None:
        def record(_module, args, result):
            # detach: the pass reads values only; float(): the rules run in float32
            if inputs:
                slot[inputs] = args[0].detach().float()
            if output:
                slot[output] = result.detach().float()

        self._handles.append(module.register_forward_hook(record))

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


# -- the rules -----------------------------------------------------------------

def safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / b`` where ``b != 0``, else 0; the denominator gets 1e-9 with ``b``'s sign (METHODS.md)."""
    nonzero = b != 0
    quotient = a / torch.where(nonzero, b + 1e-9 * b.sign(), torch.ones_like(b))
    return torch.where(nonzero, quotient, torch.zeros_like(quotient))


def image_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over everything but the batch dimension, shaped to broadcast: ``[B, 1, ...]``."""
    return tensor.sum(dim=tuple(range(1, tensor.dim())), keepdim=True)


def linear_relevance(x: torch.Tensor, weight: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """Alpha = 1, beta = 0 through ``z = x W^T (+ b)``, the bias ignored (METHODS.md, Linear)."""
    weight = weight.detach().float()
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    scaled = safe_divide(relevance, F.linear(x_pos, w_pos) + F.linear(x_neg, w_neg))
    return x_pos * (scaled @ w_pos) + x_neg * (scaled @ w_neg)


def residual_relevance(a: torch.Tensor, b: torch.Tensor,
                       relevance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add ``z = a + b``, rescaled per image to keep the total (METHODS.md)."""
    scaled = safe_divide(relevance, a + b)
    rel_a, rel_b = a * scaled, b * scaled
    total, sum_a, sum_b = image_sum(relevance), image_sum(rel_a), image_sum(rel_b)
    both = sum_a.abs() + sum_b.abs()
    # safe_divide as in the original code: an operand with zero relevance stays zero, never NaN
    rel_a = rel_a * safe_divide(safe_divide(sum_a.abs(), both) * total, sum_a)
    rel_b = rel_b * safe_divide(safe_divide(sum_b.abs(), both) * total, sum_b)
    return rel_a, rel_b


def product_relevance(x: torch.Tensor, y: torch.Tensor,
                      relevance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both operands of ``z = x @ y``: gradient times input on ``safe_divide(R, z)``, each halved (METHODS.md)."""
    scaled = safe_divide(relevance, x @ y)
    return x * (scaled @ y.transpose(-2, -1)) / 2, y * (x.transpose(-2, -1) @ scaled) / 2


# -- the pass --------------------------------------------------------------------

@dataclass
class LrpResult:
    """What one LRP pass gives.

    Attributes:
        attention_relevance: ``RA_l`` ``[B, H, N, N]`` for blocks ``first_block..L-1``.
        input_relevance: ``[B, N, D]``, the relevance at the input of block ``first_block``.
        residual_sums: per residual add, top block first and the MLP add before
            the attention add, the per-image sums ``(leaving, entering)`` ``[B]``:
            of the relevance at the add's output, and of both operands' relevance.
        first_block: the lowest block the pass went through.
    """

    attention_relevance: list[torch.Tensor]
    input_relevance: torch.Tensor
    residual_sums: list[tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    first_block: int = 0


def lrp_pass(model: VisionTransformer, activations: Activations, attention_probs: Sequence[torch.Tensor],
             targets: torch.Tensor) -> LrpResult:
    """One LRP pass for one target per image (docs/METHODS.md, "The LRP pass").

    Args:
        model: the supported ``VisionTransformer`` that ran the forward pass.
        activations: from an :class:`ActivationCapture` around that forward pass.
        attention_probs: every block's probabilities ``[B, H, N, N]`` from the
            same forward pass (float32), indexed by block.
        targets: ``[B]`` class indices, one per image.

    Returns:
        an :class:`LrpResult`.
    """
    head_input = activations.head_input
    start = F.one_hot(targets.to(head_input.device), model.head.out_features).to(head_input)
    # head_drop, fc_norm: identity
    relevance = _pooling_relevance(model, activations, linear_relevance(head_input, model.head.weight, start))
    # final norm: identity
    attention_relevance, residual_sums = [], []
    blocks = list(model.blocks)[activations.first_block:]
    for block, acts, probs in reversed(list(zip(blocks, activations.blocks,
                                                attention_probs[activations.first_block:], strict=True))):
        relevance, block_ra = _block_relevance(block, acts, probs.float(), relevance, residual_sums)
        attention_relevance.insert(0, block_ra)
    return LrpResult(attention_relevance, relevance, residual_sums, activations.first_block)


def _pooling_relevance(model: VisionTransformer, activations: Activations, pooled: torch.Tensor) -> torch.Tensor:
    """Relevance of the pooled vector ``[B, D]`` -> relevance of the tokens ``[B, N, D]``."""
    last = activations.blocks[-1]
    tokens = torch.zeros_like(last.mlp_branch)
    if model.global_pool == "token":
        tokens[:, 0] = pooled  # class-token pooling: all to the selected token (METHODS.md)
        return tokens
    # NOT COVERED BY docs/METHODS.md: mean pooling. The z-rule for a mean,
    # R_i = x_i * safe_divide(R, sum_j x_j) per dimension over the pooled tokens
    # (the 1/n of the mean cancels); the other tokens get nothing.
    first = 0 if model.pool_include_prefix else model.num_prefix_tokens
    averaged = activations.tokens[:, first:]
    tokens[:, first:] = averaged * safe_divide(pooled[:, None], averaged.sum(dim=1, keepdim=True))
    return tokens


def _block_relevance(block: Block, acts: BlockActivations, probs: torch.Tensor, relevance: torch.Tensor,
                     residual_sums: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance at a block's output -> at its input, and the block's ``RA`` (METHODS.md)."""
    attn, mlp = block.attn, block.mlp

    # x = mid + drop_path2(ls2(mlp(norm2(mid)))); drop_path, layer-scale: identity
    to_mid, to_mlp = residual_relevance(acts.mid, acts.mlp_branch, relevance)
    residual_sums.append((image_sum(relevance).flatten(), (image_sum(to_mid) + image_sum(to_mlp)).flatten()))
    hidden = linear_relevance(acts.fc2_input, mlp.fc2.weight, to_mlp)  # drop2: identity
    # mlp.norm, drop1, GELU: identity, so fc2's input relevance is fc1's output relevance
    branch = linear_relevance(acts.mlp_input, mlp.fc1.weight, hidden)
    mid = to_mid + branch  # norm2: identity; the branch point sums its two uses

    # mid = x + drop_path1(ls1(attn(norm1(x))))
    to_input, to_attn = residual_relevance(acts.block_input, acts.attn_branch, mid)
    residual_sums.append((image_sum(mid).flatten(), (image_sum(to_input) + image_sum(to_attn)).flatten()))
    merged = linear_relevance(acts.proj_input, attn.proj.weight, to_attn)  # proj_drop: identity
    batch, tokens, _ = merged.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    per_head = merged.reshape(batch, tokens, heads, head_dim).transpose(1, 2)  # merging heads, undone
    q, k, v = acts.qkv.reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)

    attention_ra, to_v = product_relevance(probs, v, per_head)  # O = A V; RA = A's halved share
    # attn_drop, softmax: identity. q is scaled before the product as in the
    # forward pass; scaling by a constant passes relevance through unchanged.
    to_q, to_kt = product_relevance(q * attn.scale, k.transpose(-2, -1), attention_ra)
    to_qkv = torch.stack([to_q, to_kt.transpose(-2, -1), to_v])  # [3, B, H, N, hd], as split
    to_qkv = to_qkv.permute(1, 3, 0, 2, 4).reshape(batch, tokens, 3 * heads * head_dim)
    branch = linear_relevance(acts.attn_input, attn.qkv.weight, to_qkv)
    return to_input + branch, attention_ra  # norm1: identity; the branch point sums
