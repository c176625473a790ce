"""The LRP rules of docs/METHODS.md, written out plainly for the tests.

Each rule works on ONE image (so a plain ``.sum()`` is the per-image sum)
and takes gradients with autograd, as the wording of METHODS.md does;
nothing here comes from vit-heatmap. The tests run these in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ref_safe_divide(a, b):
    """a / (b + 1e-9) where b != 0, else 0; a denominator of exactly 0 becomes 1e-9."""
    den = b + 1e-9
    den = den.masked_fill(den == 0, 1e-9)
    return (a / den).masked_fill(b == 0, 0.0)


def ref_linear(x, weight, R):
    """Alpha 1, beta 0, bias ignored: each sign part's gradient times input, one shared Z."""
    weight = weight.detach()
    x_pos = x.clamp(min=0).requires_grad_(True)
    x_neg = x.clamp(max=0).requires_grad_(True)
    with torch.enable_grad():
        Z = F.linear(x_pos, weight.clamp(min=0)) + F.linear(x_neg, weight.clamp(max=0))
        grad_pos, grad_neg = torch.autograd.grad(Z, (x_pos, x_neg), ref_safe_divide(R, Z.detach()))
    return (x_pos * grad_pos + x_neg * grad_neg).detach()


def ref_product(x, y, R):
    """Both operands of x @ y: operand * d(x @ y)/d(operand) applied to R / (x @ y), halved."""
    x = x.detach().clone().requires_grad_(True)
    y = y.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        Z = x @ y
        grad_x, grad_y = torch.autograd.grad(Z, (x, y), ref_safe_divide(R, Z.detach()))
    return (x * grad_x / 2).detach(), (y * grad_y / 2).detach()


def ref_add(a, b, R):
    """Residual add of ONE image, rescaled to keep the total."""
    Ra = a * ref_safe_divide(R, a + b)
    Rb = b * ref_safe_divide(R, a + b)
    sa, sb = Ra.sum(), Rb.sum()
    Ra = Ra * ref_safe_divide(ref_safe_divide(sa.abs(), sa.abs() + sb.abs()) * R.sum(), sa)
    Rb = Rb * ref_safe_divide(ref_safe_divide(sb.abs(), sa.abs() + sb.abs()) * R.sum(), sb)
    return Ra, Rb


def ref_clone(x, R1, R2):
    """The branch point: x * (R1 / x + R2 / x), safe divisions (the authors' Clone)."""
    return x * (ref_safe_divide(R1, x) + ref_safe_divide(R2, x))


def ref_select(x, R):
    """A selected token: x * safe_divide(R, x) (the authors' IndexSelect)."""
    return x * ref_safe_divide(R, x)


def ref_unnormalized_rollout(fused):
    """(I + Abar_last) @ ... @ (I + Abar_first) of one image's [N, N] matrices."""
    N = fused[0].shape[-1]
    eye = torch.eye(N, dtype=fused[0].dtype)
    R = eye
    for Abar in fused:
        R = (Abar + eye) @ R
    return R


def ref_forward(model, image):
    """One image [1, 3, H, W] through the model by hand, keeping each block's operands."""
    with torch.no_grad():
        x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(image))))
        blocks = []
        for block in model.blocks:
            attn = block.attn
            h = block.norm1(x)
            _, N, _ = h.shape
            qkv = attn.qkv(h).reshape(1, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # q unscaled: the LRP product is Q K^T
            A = torch.softmax((q * attn.scale) @ k.transpose(-2, -1), dim=-1)
            merged = (A @ v).transpose(1, 2).reshape(1, N, -1)
            attn_out = block.ls1(attn.proj(merged))
            mid = x + attn_out
            h2 = block.norm2(mid)
            hidden = block.mlp.act(block.mlp.fc1(h2))
            mlp_out = block.ls2(block.mlp.fc2(hidden))
            blocks.append(dict(x=x, h=h, q=q, k=k, v=v, A=A, merged=merged, attn_out=attn_out,
                               mid=mid, h2=h2, hidden=hidden, mlp_out=mlp_out))
            x = mid + mlp_out
        tokens = model.norm(x)
        if model.global_pool == "token":
            pooled = model.fc_norm(tokens[:, 0])
        else:
            first = 0 if model.pool_include_prefix else model.num_prefix_tokens
            pooled = tokens[:, first:].mean(dim=1)
            pooled = model.fc_norm(pooled)
    return dict(blocks=blocks, tokens=tokens, head_input=pooled, logits=model.head(pooled))


def ref_lrp(model, image, target, linear=None, add=None):
    """RA per block, the block-0 input relevance and per-add (leaving, entering) sums, one image of a timm ViT.

    ``linear`` and ``add``: the rules where the rule sets differ (default:
    transformer-attribution's ``ref_linear`` and ``ref_add``; the ORIGINAL
    set's are ``ref_linear_original`` and ``ref_add_original``).
    """
    linear = linear or ref_linear
    add = add or ref_add
    fwd = ref_forward(model, image)
    R = torch.zeros_like(fwd["logits"])
    R[0, target] = 1.0
    R = linear(fwd["head_input"], model.head.weight, R)  # fc_norm, head_drop: identity
    tokens = fwd["tokens"]
    R_tokens = torch.zeros_like(tokens)
    if model.global_pool == "token":  # fc_norm: identity; then the IndexSelect rule
        R_tokens[0, 0] = ref_select(tokens[0, 0], R[0])
    else:  # the z-rule of a mean (not in METHODS.md; see explainers/lrp.py)
        first = 0 if model.pool_include_prefix else model.num_prefix_tokens
        total = tokens[0, first:].sum(dim=0)
        for i in range(first, tokens.shape[1]):
            R_tokens[0, i] = tokens[0, i] * ref_safe_divide(R[0], total)
    R = R_tokens  # final norm: identity
    RA, sums = [None] * len(model.blocks), []
    for index in reversed(range(len(model.blocks))):
        block, f = model.blocks[index], fwd["blocks"][index]
        R_mid, R_mlp = add(f["mid"], f["mlp_out"], R)
        sums.append((R.sum(), R_mid.sum() + R_mlp.sum()))
        R_hidden = linear(f["hidden"], block.mlp.fc2.weight, R_mlp)
        R_h2 = linear(f["h2"], block.mlp.fc1.weight, R_hidden)
        R = ref_clone(f["mid"], R_mid, R_h2)
        R_x, R_attn = add(f["x"], f["attn_out"], R)
        sums.append((R.sum(), R_x.sum() + R_attn.sum()))
        R_merged = linear(f["merged"], block.attn.proj.weight, R_attn)
        heads, head_dim = block.attn.num_heads, block.attn.head_dim
        R_o = R_merged.reshape(1, -1, heads, head_dim).transpose(1, 2)
        R_A, R_v = ref_product(f["A"], f["v"], R_o)
        RA[index] = R_A[0]
        R_q, R_kT = ref_product(f["q"], f["k"].transpose(-2, -1), R_A)  # softmax: identity
        R_qkv = torch.stack([R_q, R_kT.transpose(-2, -1), R_v]).permute(1, 3, 0, 2, 4).reshape(1, R_q.shape[2], -1)
        R = ref_clone(f["x"], R_x, linear(f["h"], block.attn.qkv.weight, R_qkv))
    return RA, R[0], sums


def ref_linear_original(x, weight, R):
    """The ORIGINAL Linear: each sign part normalised by its own Z (gradient times input, autograd)."""
    weight = weight.detach()
    x_pos = x.clamp(min=0).requires_grad_(True)
    x_neg = x.clamp(max=0).requires_grad_(True)
    with torch.enable_grad():
        Z_pos = F.linear(x_pos, weight.clamp(min=0))
        Z_neg = F.linear(x_neg, weight.clamp(max=0))
        grad_pos, = torch.autograd.grad(Z_pos, x_pos, ref_safe_divide(R, Z_pos.detach()))
        grad_neg, = torch.autograd.grad(Z_neg, x_neg, ref_safe_divide(R, Z_neg.detach()))
    return (x_pos * grad_pos + x_neg * grad_neg).detach()


def ref_add_original(a, b, R):
    """The ORIGINAL residual add: each operand's share, not rescaled."""
    return a * ref_safe_divide(R, a + b), b * ref_safe_divide(R, a + b)


def relative_error(actual, expected):
    """Largest |actual - expected| relative to the largest |expected|."""
    assert actual.shape == expected.shape
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-300))


def assert_close_scaled(actual, expected, tolerance):
    """Equal to ``tolerance`` relative to the largest magnitude of ``expected``."""
    assert relative_error(actual, expected) < tolerance
