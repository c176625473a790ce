"""The LRP pass of transformer-attribution (docs/METHODS.md, "The LRP pass").

Relevance starts at the model's output (the one-hot of the target logit, or
for a CLIP tower ``R_e = e * (s / ||e||) * t_hat``) and flows backwards
through the final Linear, the pooling, the final norm and every block, down
to the input of the first block asked for. On its way through each block's
``O = A V`` it leaves ``RA_l``, the relevance of the attention probabilities,
which :mod:`heatmap.explainers.transformer_attribution` weights with the
gradients.

The pass knows pre-norm blocks, a pooling and a final Linear, and nothing of
timm or open_clip: the adapter's :class:`~heatmap.models.protocols.LrpView`
gives the weights and an activation recorder
that records the activations of the forward pass being explained (no second
forward). Every sum is over one image, so each image's relevance is
independent of the rest of the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from heatmap.models.protocols import Activations, BlockActivations, BlockWeights, LrpView

# -- the rules -----------------------------------------------------------------

def safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / (b + 1e-9)`` where ``b != 0``, else 0 (METHODS.md).

    The stabiliser is +1e-9 whatever ``b``'s sign, as the authors compute it
    (``b.clamp(min=1e-9) + b.clamp(max=1e-9)``, which is ``b + 1e-9``); a
    denominator that lands on exactly 0 becomes 1e-9.
    """
    denominator = b + 1e-9
    denominator = torch.where(denominator == 0, torch.full_like(denominator, 1e-9), denominator)
    return torch.where(b != 0, a / denominator, torch.zeros_like(a))


def image_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over everything but the batch dimension, shaped to broadcast: ``[B, 1, ...]``."""
    return tensor.sum(dim=tuple(range(1, tensor.dim())), keepdim=True)


def linear_relevance(x: torch.Tensor, weight: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """Alpha = 1, beta = 0 through ``z = x W^T (+ b)``, the bias ignored (METHODS.md, Linear)."""
    weight = weight.detach().to(x.dtype)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    scaled = safe_divide(relevance, F.linear(x_pos, w_pos) + F.linear(x_neg, w_neg))
    return x_pos * (scaled @ w_pos) + x_neg * (scaled @ w_neg)


def linear_relevance_original(x: torch.Tensor, weight: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """The ORIGINAL rule set's Linear: the positive and negative parts normalised SEPARATELY (METHODS.md).

    Each part keeps all of ``R``, so the total is not conserved; that is what
    the paper's LRP and partial-LRP rows measured (the authors' ``layers_lrp.py``).
    """
    weight = weight.detach().to(x.dtype)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    scaled_pos = safe_divide(relevance, F.linear(x_pos, w_pos))
    scaled_neg = safe_divide(relevance, F.linear(x_neg, w_neg))
    return x_pos * (scaled_pos @ w_pos) + x_neg * (scaled_neg @ w_neg)


def residual_relevance_original(a: torch.Tensor, b: torch.Tensor,
                                relevance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ORIGINAL rule set's residual add: each operand's share of ``R``, NOT rescaled (METHODS.md)."""
    scaled = safe_divide(relevance, a + b)
    return a * scaled, b * scaled


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


def clone_relevance(x: torch.Tensor, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """The branch point before a residual: ``x * (safe_divide(R_1, x) + safe_divide(R_2, x))``.

    The authors' ``Clone`` rule. It equals ``R_1 + R_2`` up to the
    stabiliser, but LRP amplifies that difference (METHODS.md), so the rule
    is kept exactly.
    """
    return x * (safe_divide(skip, x) + safe_divide(branch, x))


def patch_embedding_relevance(image: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int],
                              relevance: torch.Tensor) -> torch.Tensor:
    """The bounded z^B rule through the patch convolution, bias ignored (docs/METHODS.md, full-lrp step 3).

    Args:
        image: the normalised image ``X`` ``[B, 3, H, W]``.
        weight: the convolution's ``[D, 3, ph, pw]``.
        stride: its stride (= its kernel).
        relevance: ``[B, D, gh, gw]``, the patch tokens' relevance on the grid.

    Returns:
        ``[B, 3, H, W]``; pixels the convolution never reads get 0.
    """
    weight = weight.detach().to(image.dtype)
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    # the bounds: the smallest and largest value of each image, over channels and pixels
    low = image.amin(dim=(1, 2, 3), keepdim=True).expand_as(image)
    high = image.amax(dim=(1, 2, 3), keepdim=True).expand_as(image)
    za = (F.conv2d(image, weight, stride=stride) - F.conv2d(low, w_pos, stride=stride)
          - F.conv2d(high, w_neg, stride=stride) + 1e-9)  # a plain +1e-9 here, not safe_divide
    scaled = relevance / za

    # the transposed convolution, padded to the image's size where the patches do not cover it
    kernel_size = weight.shape[-2:]
    uncovered = tuple(image.shape[-2 + axis] - ((scaled.shape[-2 + axis] - 1) * stride[axis] + kernel_size[axis])
                      for axis in (0, 1))

    def backward(kernel: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(scaled, kernel, stride=stride, output_padding=uncovered)

    return image * backward(weight) - low * backward(w_pos) - high * backward(w_neg)


def selection_relevance(selected: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """A selected token ``x``: ``x * safe_divide(R, x)`` (the authors' ``IndexSelect``)."""
    return selected * safe_divide(relevance, selected)


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
        start_sums: ``[B]``, the per-image sum of the start relevance.
        first_block: the lowest block the pass went through.
        pixel_relevance: ``[B, 3, H, W]`` when the pass went on to the pixels, else None.
    """

    attention_relevance: list[torch.Tensor]
    input_relevance: torch.Tensor
    residual_sums: list[tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    start_sums: torch.Tensor = field(repr=False)
    first_block: int = 0
    pixel_relevance: torch.Tensor | None = None


@dataclass(frozen=True)
class Rules:
    """The two rules in which the rule sets differ; every other rule is shared (METHODS.md)."""

    linear: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    residual: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


RULE_SETS = {
    # transformer-attribution's (the authors' layers_ours.py)
    "transformer-attribution": Rules(linear_relevance, residual_relevance),
    # the paper's LRP baselines' (the authors' layers_lrp.py)
    "original": Rules(linear_relevance_original, residual_relevance_original),
}


def lrp_pass(view: LrpView, activations: Activations, attention_probs: Sequence[torch.Tensor],
             target: torch.Tensor, rules: str = "transformer-attribution", to_pixels: bool = False) -> LrpResult:
    """One LRP pass for one target per image (docs/METHODS.md, "The LRP pass").

    Args:
        view: the model's LRP view (its adapter's ``lrp_view()``).
        activations: from ``view.capture(first_block)`` around the forward pass.
        attention_probs: every block's probabilities ``[B, H, N, N]`` from the
            same forward pass, indexed by block, in the computation's dtype.
        target: ``view.start == "logit"``: class indices ``[B]``;
            ``"embedding"``: ``[B, E]``, the gradient of the score with respect
            to the unit embedding, ``s * t_hat`` (CLIP: logit scale times the
            other tower's unit embedding).
        rules: ``"transformer-attribution"`` or ``"original"`` (:data:`RULE_SETS`).
        to_pixels: go on below the first block to the pixels (full-lrp;
            the original rules, a capture from block 0, a view with a patch embedding).
    """
    rule_set = RULE_SETS[rules]
    head = activations.head
    start = start_relevance(view, head.output, target)
    pooled = start if view.head_weight is None else rule_set.linear(head.pooled, view.head_weight, start)
    # the final norm (and timm's fc_norm, head_drop): identity
    relevance = pooling_relevance(view, activations, pooled)
    attention_relevance: list[torch.Tensor] = []
    residual_sums: list[tuple[torch.Tensor, torch.Tensor]] = []
    first = activations.first_block
    for weights, acts, probs in reversed(list(zip(view.blocks[first:], activations.blocks,
                                                  attention_probs[first:], strict=True))):
        relevance, block_ra = block_relevance(weights, acts, probs, relevance, residual_sums, rule_set)
        attention_relevance.insert(0, block_ra)
    pixels = pixel_relevance(view, activations, relevance, rules) if to_pixels else None
    return LrpResult(attention_relevance, relevance, residual_sums, image_sum(start).flatten(), first, pixels)


def pixel_relevance(view: LrpView, activations: Activations, relevance: torch.Tensor, rules: str) -> torch.Tensor:
    """The first block's input relevance ``[B, N, D]`` -> the pixels' ``[B, 3, H, W]`` (METHODS.md, full-lrp).

    Under the norm before the blocks (identity), the position-embedding add
    ``x = t + pos`` keeps t's share by the original add rule,
    ``t * safe_divide(R, x)``; the prefix tokens are dropped; the patch
    tokens go back to the grid and through the patch convolution by the z^B rule.
    """
    if rules != "original":
        raise ValueError("docs/METHODS.md defines the pass to the pixels under the original rules only")
    embedding = activations.embedding
    if view.embedding is None or embedding is None or activations.first_block != 0:
        raise RuntimeError(f"no pass to the pixels: {view.embedding_problem or 'the capture did not start at block 0'}")
    patches = embedding.patches
    count = patches.shape[1]
    share = patches * safe_divide(relevance[:, -count:], embedding.embedded[:, -count:])  # the patches come last
    image = embedding.image
    stride = view.embedding.stride
    kernel = view.embedding.weight.shape[-2:]
    grid_height = (image.shape[-2] - kernel[0]) // stride[0] + 1
    grid_width = (image.shape[-1] - kernel[1]) // stride[1] + 1
    grid = share.transpose(1, 2).reshape(len(share), share.shape[-1], grid_height, grid_width)
    return patch_embedding_relevance(image, view.embedding.weight, stride, grid)


def start_relevance(view: LrpView, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The relevance at the model's output ``[B, C]`` (docs/METHODS.md, "Start" and CLIP)."""
    if view.start == "logit":
        return F.one_hot(target.to(output.device), output.shape[-1]).to(output)
    # R_e = e * (s / ||e||) * t_hat: each dimension's share of the score s cos(e, t)
    unit: torch.Tensor = output / output.norm(dim=-1, keepdim=True)
    return unit * target.to(output)


def pooling_relevance(view: LrpView, activations: Activations, pooled: torch.Tensor) -> torch.Tensor:
    """Relevance of the pooled vector ``[B, D]`` -> relevance of the tokens ``[B, N, D]``."""
    head = activations.head
    tokens = torch.zeros_like(activations.blocks[-1].mlp_branch)
    if view.pooling == "token":
        # the selected token gets x * safe_divide(R, x), the others nothing (METHODS.md, IndexSelect)
        assert head.token_index is not None and head.selected is not None  # what token pooling records
        rows = torch.arange(len(tokens))
        tokens[rows, head.token_index.to(tokens.device)] = selection_relevance(head.selected, pooled)
        return tokens
    # NOT COVERED BY docs/METHODS.md: mean pooling. The z-rule for a mean,
    # R_i = x_i * safe_divide(R, sum_j x_j) per dimension over the pooled tokens
    # (the 1/n of the mean cancels); the other tokens get nothing.
    averaged = head.pooled_tokens
    assert averaged is not None  # what mean pooling records
    tokens[:, head.pooled_from:] = averaged * safe_divide(pooled[:, None], averaged.sum(dim=1, keepdim=True))
    return tokens


def block_relevance(weights: BlockWeights, acts: BlockActivations, probs: torch.Tensor, relevance: torch.Tensor,
                    residual_sums: list[tuple[torch.Tensor, torch.Tensor]],
                    rules: Rules = RULE_SETS["transformer-attribution"]) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance at a block's output -> at its input, and the block's ``RA`` (METHODS.md)."""
    # x = mid + drop_path2(ls2(mlp(norm2(mid)))); drop_path, layer-scale: identity
    to_mid, to_mlp = rules.residual(acts.mid, acts.mlp_branch, relevance)
    residual_sums.append((image_sum(relevance).flatten(), (image_sum(to_mid) + image_sum(to_mlp)).flatten()))
    hidden = rules.linear(acts.fc2_input, weights.fc2, to_mlp)  # drop2: identity
    # drop1, GELU: identity, so fc2's input relevance is fc1's output relevance
    branch = rules.linear(acts.mlp_input, weights.fc1, hidden)
    mid = clone_relevance(acts.mid, to_mid, branch)  # norm2: identity

    # mid = x + drop_path1(ls1(attn(norm1(x))))
    to_input, to_attn = rules.residual(acts.block_input, acts.attn_branch, mid)
    residual_sums.append((image_sum(mid).flatten(), (image_sum(to_input) + image_sum(to_attn)).flatten()))
    merged = rules.linear(acts.proj_input, weights.proj, to_attn)  # proj_drop: identity
    batch, tokens, width = merged.shape
    heads = weights.num_heads
    head_dim = width // heads
    per_head = merged.reshape(batch, tokens, heads, head_dim).transpose(1, 2)  # merging heads, undone
    q, k, v = acts.qkv.reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)

    attention_ra, to_v = product_relevance(probs, v, per_head)  # O = A V; RA = A's halved share
    # attn_drop, softmax: identity (and a text tower's causal mask, a constant
    # added to the scores, like a bias). The product is Q K^T WITHOUT the
    # 1/sqrt(d) scale: the forward scales after (or before) the product, and
    # a constant factor is an identity for relevance (METHODS.md).
    to_q, to_kt = product_relevance(q, k.transpose(-2, -1), attention_ra)
    to_qkv = torch.stack([to_q, to_kt.transpose(-2, -1), to_v])  # [3, B, H, N, hd], as split
    to_qkv = to_qkv.permute(1, 3, 0, 2, 4).reshape(batch, tokens, 3 * heads * head_dim)
    branch = rules.linear(acts.attn_input, weights.qkv, to_qkv)
    return clone_relevance(acts.block_input, to_input, branch), attention_ra  # norm1: identity
