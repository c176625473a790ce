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


def relative_error(actual, expected):
    """Largest |actual - expected| relative to the largest |expected|."""
    assert actual.shape == expected.shape
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-300))


def assert_close_scaled(actual, expected, tolerance):
    """Equal to ``tolerance`` relative to the largest magnitude of ``expected``."""
    assert relative_error(actual, expected) < tolerance
