"""An independent float64 reading of docs/METHODS.md for timm's modern ViTs: ``Eva`` (EVA02, DINOv3, Perception
Encoder), ``VisionTransformer`` and ``NaFlexVit`` with an attention-pool ("map") head.

The forward pass is written out by hand with explicit attention, so that
every block's ``A_l`` and the head's probabilities are tensors in the graph;
the parts that are not attention (patch embedding, position embedding and
the RoPE tensor, norms, MLPs, layer scale, the classifier) are the model's own
submodules, and RoPE is applied with timm's ``apply_rot_embed_cat`` as the
model does. An attention-pool head is laid out as "Modern ViT parts" says
(the probe first, every block padded with a zero row and column 0, the head
as one more layer whose row 0 is its probabilities), written here without
vit-heatmap's code; the aggregation rules are the plain loops of
``helpers.reference`` and ``helpers.baseline_reference``.
"""

from __future__ import annotations

import math

import torch
from timm.layers import apply_rot_embed_cat
from timm.models.eva import Eva, EvaBlock
from timm.models.naflexvit import NaFlexVit
from timm.models.vision_transformer import Block, VisionTransformer

from helpers import baseline_reference, reference

# -- random weights that make every method's map non-trivial ---------------------------


def reinitialise(model, seed, qk_gain=1.5):
    """Redraw every parameter from a seeded normal and put the model in eval mode.

    timm zero-initialises biases, starts layer scale at 1e-5 and scales the
    head by 1e-3: the gradients then nearly vanish and every method looks
    alike. Here norm weights and layer scales are near 1, biases and tokens
    of order 0.3, matrices of unit gain (query and key projections larger, so
    that attention rows are peaked).
    """
    generator = torch.Generator().manual_seed(seed)

    def normal(shape):
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("cls_token", "reg_token", "pos_embed", "latent"):
                value = 0.5 * normal(param.shape)
            elif param.dim() >= 2:
                gain = qk_gain if any(part in name for part in ("qkv", "q_proj", "k_proj", "attn_pool.q",
                                                               "attn_pool.kv")) else 1.0
                value = normal(param.shape) * gain / math.sqrt(param[0].numel())
            elif leaf == "weight" or "gamma" in leaf:  # norms and layer scales
                value = 1.0 + 0.2 * normal(param.shape)
            else:  # biases (EVA's q_bias and v_bias among them)
                value = 0.3 * normal(param.shape)
            param.copy_(value.to(param.dtype))
    return model.eval()


# -- the forward pass, attention explicit -------------------------------------------


def attention(attn, x, rope):
    """One attention module (timm ``Attention``, ``AttentionRope`` or ``EvaAttention``): output and ``A``."""
    B, N, _ = x.shape
    H = attn.num_heads
    assert getattr(attn, "num_kv_groups", 1) == 1
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    if attn.qkv is not None:
        q_bias = getattr(attn, "q_bias", None)
        if q_bias is not None:  # EVA: the key has no bias of its own (a zero buffer)
            qkv = torch.nn.functional.linear(x, attn.qkv.weight, torch.cat((q_bias, attn.k_bias, attn.v_bias)))
        else:
            qkv = attn.qkv(x)
        q, k, v = qkv.reshape(B, N, 3, H, -1).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q, k, v = (proj(x).reshape(B, N, H, -1).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:  # rotate the patch tokens only, as the model does
        P, half = attn.num_prefix_tokens, attn.rotate_half
        q = torch.cat([q[:, :, :P], apply_rot_embed_cat(q[:, :, P:], rope, half=half)], dim=2)
        k = torch.cat([k[:, :, :P], apply_rot_embed_cat(k[:, :, P:], rope, half=half)], dim=2)
    A = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    out = attn.norm((A @ v).transpose(1, 2).reshape(B, N, -1))
    if gate is not None:
        out = out * gate
    return attn.proj(out), A


def block_forward(block, x, rope):
    """A pre-norm block (timm ``Block`` or ``EvaBlock``): output tokens and ``A``."""
    out, A = attention(block.attn, block.norm1(x), rope)
    if isinstance(block, EvaBlock):
        scale1, scale2 = block.gamma_1, block.gamma_2
        x = x + (out if scale1 is None else scale1 * out)
        mlp = block.mlp(block.norm2(x))
        return x + (mlp if scale2 is None else scale2 * mlp), A
    assert type(block) is Block
    x = x + block.ls1(out)
    return x + block.ls2(block.mlp(block.norm2(x))), A


def embedded(model, images):
    """The tokens entering the first block and the RoPE tensor (or None)."""
    if isinstance(model, Eva):
        x, rope = model._pos_embed(model.patch_embed(images))
        assert not model.rope_mixed
    elif isinstance(model, NaFlexVit):
        assert model.rope is None
        x, rope = model.embeds(images)[0], None
    else:
        assert isinstance(model, VisionTransformer)
        x, rope = model.patch_drop(model._pos_embed(model.patch_embed(images))), None
    return model.norm_pre(x), rope


def pool_head(head, x):
    """timm's ``AttentionPoolLatent`` written out: pooled ``[B, C]`` and probabilities ``[B, H, Q, K]``."""
    B, K, C = x.shape
    if head.pos_embed is not None:
        x = x + head.pos_embed.unsqueeze(0)
    H = head.num_heads
    q = head.q(head.latent.expand(B, -1, -1)).reshape(B, -1, H, C // H).transpose(1, 2)
    k, v = head.kv(x).reshape(B, K, 2, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = head.q_norm(q), head.k_norm(k)
    probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(C // H), dim=-1)
    pooled = head.proj((probs @ v).transpose(1, 2).reshape(B, -1, C))
    if head.mlp is not None:
        pooled = pooled + head.mlp(head.norm(pooled))
    assert head.pool in ("token", "avg")
    return (pooled[:, 0] if head.pool == "token" else pooled.mean(dim=1)), probs


def readout(model, x):
    """The logits the model reads from tokens ``x`` (final norm, pooling or attention-pool head, fc_norm,
    head) and the head's probabilities (None without an attention-pool head)."""
    tokens = model.norm(x)
    probs = None
    if model.attn_pool is not None:
        if isinstance(model, NaFlexVit) and not model.pool_include_prefix:
            tokens = tokens[:, model.num_prefix_tokens:]  # the head attends to the patches only
        pooled, probs = pool_head(model.attn_pool, tokens)
    elif model.global_pool == "token":
        pooled = tokens[:, 0]
    else:  # timm's mean over the patch tokens (prefix tokens left out)
        assert model.global_pool == "avg" and not getattr(model, "pool_include_prefix", False)
        pooled = tokens[:, model.num_prefix_tokens:].mean(dim=1)
    return model.head(model.fc_norm(pooled)), probs


def forward(model, images):
    """Logits, each block's output tokens and ``A_l`` (in the graph), and the head's probabilities or None."""
    x, rope = embedded(model, images)
    outputs, attentions = [], []
    for block in model.blocks:
        x, A = block_forward(block, x, rope)
        outputs.append(x)
        attentions.append(A)
    logits, head_probs = readout(model, x)
    return logits, outputs, attentions, head_probs


def relative_error(actual, expected):
    assert actual.shape == expected.shape
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-300))


# -- the layout of docs/METHODS.md, "Modern ViT parts" --------------------------------


def padded(matrix):
    """A block's ``[H, N, N]`` -> ``[H, N+1, N+1]``: the probe's row and column all zero."""
    H, N, _ = matrix.shape
    out = torch.zeros(H, N + 1, N + 1, dtype=matrix.dtype)
    out[:, 1:, 1:] = matrix
    return out


def head_layer(probs, num_tokens):
    """The head's ``[H, Q, K]`` -> ``[H, N+1, N+1]``: row 0 the mean over the probes at the last K columns (the
    tokens the head attends to), every other entry 0."""
    H, _, K = probs.shape
    out = torch.zeros(H, num_tokens + 1, num_tokens + 1, dtype=probs.dtype)
    out[:, 0, num_tokens + 1 - K:] = probs.mean(dim=1)
    return out


class Layers:
    """One image's per-layer ``A_l``, ``dA_l`` (of its target logit) and the read-out geometry.

    With an attention-pool head the layers are the padded blocks and the head
    (``L + 1`` of them), the query row is the probe's and the map's columns
    start after the probe and the model's prefix tokens.
    """

    def __init__(self, model, image, target, grid):
        logits, self.outputs, attentions, head_probs = forward(model, image)
        with torch.no_grad():
            own = model(image)
        assert relative_error(logits.detach(), own) < 1e-13  # the hand-written forward is the model's
        self.logit = logits[0, target]
        tracked = attentions + ([head_probs] if head_probs is not None else [])
        grads = torch.autograd.grad(self.logit, tracked, retain_graph=True)
        self.model, self.target, self.grid = model, target, grid
        self.block_attentions = attentions
        prefix = model.num_prefix_tokens
        if head_probs is None:
            self.A = [a[0].detach() for a in attentions]
            self.dA = [g[0] for g in grads]
            self.prefix = prefix
            self.query = ("token", 0) if model.global_pool == "token" else ("mean", prefix)
            self.protect = 0 if model.global_pool == "token" else None
        else:
            N = attentions[0].shape[-1]
            self.A = [padded(a[0].detach()) for a in attentions] + [head_layer(head_probs[0].detach(), N)]
            self.dA = [padded(g[0]) for g in grads[:-1]] + [head_layer(grads[-1][0], N)]
            self.prefix = prefix + 1  # the probe, then the model's own prefix tokens
            self.query = ("token", 0)
            self.protect = 0
        self.pooled = head_probs is not None

    @property
    def size(self):
        return self.A[0].shape[-1]

    def read(self, R):
        """The map of a relevance matrix: its query row at the patch columns, ``[gh, gw]``."""
        return reference.query_row(R, self.query)[self.prefix:].reshape(self.grid)

    def rollout(self, head_fusion="mean", discard_ratio=0.0, start_layer=0):
        return self.read(reference.rollout_one(self.A, head_fusion, discard_ratio, start_layer, self.protect))

    def grad_rollout(self, discard_ratio=0.9, start_layer=0):
        return self.read(reference.grad_rollout_one(self.A, self.dA, discard_ratio, start_layer))

    def chefer_generic(self, start_layer=0):
        return self.read(reference.chefer_generic_one(self.A, self.dA, start_layer))

    def raw_attention(self):
        return baseline_reference.raw_attention(self.A[-1], self.query, self.prefix).reshape(self.grid)

    def attention_gradcam(self):
        return baseline_reference.attention_gradcam(self.A[-1], self.dA[-1], self.query, self.prefix).reshape(
            self.grid)

    def legrad(self, start_layer=-2):
        """Sum over the blocks l = s..L-1 (s counted over the layers, the head included) of
        mean_h mean_queries (d y_l / d A_l)+ at the patch columns; the blocks padded for the probe."""
        layers = len(self.A)
        start = start_layer % layers
        assert start < len(self.block_attentions), "the head alone is not one of LeGrad's layers"
        total = torch.zeros(self.size, dtype=self.A[0].dtype)
        for layer in range(start, len(self.block_attentions)):
            y = readout(self.model, self.outputs[layer])[0][0, self.target]
            G, = torch.autograd.grad(y, self.block_attentions[layer], retain_graph=True)
            G = padded(G[0]) if self.pooled else G[0]
            total = total + G.clamp(min=0).mean(dim=0).mean(dim=0)  # heads, then ALL query rows
        return total[self.prefix:].reshape(self.grid)

    def reference(self, method, options):
        name = method.replace("-", "_")
        return getattr(self, name)(**options)

    # -- what keeps ties from deciding a discard -------------------------------------

    def fused(self, method, options):
        """Per layer from the start, the fused ``[N', N']`` whose smallest entries the discard sets to 0."""
        start = options.get("start_layer", 0) % len(self.A)
        if method == "rollout":
            fuse = {"mean": lambda a: a.mean(0), "max": lambda a: a.amax(0), "min": lambda a: a.amin(0)}
            return [fuse[options.get("head_fusion", "mean")](a) for a in self.A[start:]]
        return [(a * g).mean(0).clamp(min=0) for a, g in zip(self.A[start:], self.dA[start:], strict=True)]


def discard_gap(fused, ratio):
    """The smallest relative gap, over the layers, between the largest discarded and the smallest kept entry
    (``inf`` where the boundary falls among exact zeros, which a discard leaves as they are)."""
    gap = math.inf
    for F in fused:
        values = F.flatten().sort().values
        count = math.floor(ratio * values.numel())
        if 0 < count < values.numel() and values[count] != 0:
            gap = min(gap, float((values[count] - values[count - 1]) / values[-1]))
    return gap
