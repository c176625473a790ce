"""The timm adapter's attention capture records the right tensors and leaves the model as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Attention

from heatmap.errors import HeatmapError
from heatmap.explainers.driver import frozen_parameters
from heatmap.models.timm.adapter import TimmTower
from helpers import reference
from helpers.models import tiny_vit


def attention_modules(model):
    return [block.attn for block in model.blocks]


def capture(model, name, track_from=None):
    """The capture the driver opens on a timm ViT's tower."""
    return TimmTower(model, name).attention_capture(track_from)


@pytest.mark.numerics
def test_records_the_probabilities_that_multiply_v(images):
    model, images = tiny_vit().double(), images.double()
    with torch.no_grad():
        _, expected = reference.manual_forward(model, images)
        with capture(model, "tiny") as probe:
            model(images)
        recorded = probe.attention_probs
    assert len(recorded) == len(model.blocks)
    for probs, reference_probs in zip(recorded, expected, strict=False):
        # float64; measured 0 difference, native and portable: the probe records the very tensor
        torch.testing.assert_close(probs, reference_probs, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1], dtype=torch.float64))


@pytest.mark.numerics
def test_logits_identical_with_and_without_probe(images):
    model = tiny_vit()
    for module in attention_modules(model):
        module.fused_attn = False  # the same kernel path inside and outside: bit-identical
    with torch.no_grad():
        plain = model(images)
        with capture(model, "tiny", track_from=0):
            probed = model(images)
    assert torch.equal(plain, probed)


@pytest.mark.numerics
def test_fused_model_agrees_and_gets_its_setting_back(images):
    model = tiny_vit()
    for module in attention_modules(model):
        module.fused_attn = True
    with torch.no_grad():
        fused = model(images)
        with capture(model, "tiny"):
            assert not any(module.fused_attn for module in attention_modules(model))
            probed = model(images)
    # float32, relative to the largest logit; measured: 2.9e-7 native, 3.9e-7 portable
    # (ATEN_CPU_CAPABILITY=default); 1e-5 keeps over 25x
    assert (probed - fused).abs().max() < 1e-5 * fused.abs().max()
    assert all(module.fused_attn for module in attention_modules(model))


def test_model_restored_after_an_exception(images):
    model = tiny_vit()
    for module in attention_modules(model):
        module.fused_attn = True
    model.blocks[1].attn.qkv.weight.requires_grad_(False)  # a partly frozen model stays so
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"):
        with frozen_parameters(model), capture(model, "tiny", track_from=0):
            assert not any(p.requires_grad for p in model.parameters())
            model(images)
            raise RuntimeError("boom")
    assert all(module.fused_attn for module in attention_modules(model))
    assert {name: p.requires_grad for name, p in model.named_parameters()} == before
    assert all(not module.attn_drop._forward_hooks for module in attention_modules(model))


@pytest.mark.numerics
def test_gradients_only_for_attention_not_weights(images):
    model, images = tiny_vit().double(), images.double()
    with frozen_parameters(model), capture(model, "tiny", track_from=1) as probe:
        with torch.enable_grad():
            logits = model(images)
        grads = torch.autograd.grad(logits[:, 2].sum(), probe.tracked())
    assert len(grads) == len(model.blocks) - 1
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.parameters())
    # the same gradients as a plain backward through the explicit forward
    _, _, expected = reference.gradients(model, images, torch.tensor([2, 2, 2]))
    for grad, reference_grad in zip(grads, expected[1:], strict=False):
        # float64; measured 0 difference, native and portable: the same backward
        # through the same forward
        torch.testing.assert_close(grad, reference_grad, rtol=1e-12, atol=1e-15)


class OpaqueAttention(Attention):
    """An attention that never forms its probabilities (always fused)."""

    def forward(self, x, attn_mask=None, is_causal=False):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C))


def test_empty_capture_is_an_error_naming_the_model(images):
    model = tiny_vit()
    opaque = OpaqueAttention(32, num_heads=4, qkv_bias=True)
    opaque.load_state_dict(model.blocks[2].attn.state_dict())
    model.blocks[2].attn = opaque
    with capture(model, "my-opaque-vit") as probe:
        model(images)
    with pytest.raises(HeatmapError, match=r"my-opaque-vit.*block\(s\) \[2\]"):
        _ = probe.attention_probs


def test_unknown_attention_module_is_refused(images):
    model = tiny_vit()
    model.blocks[0].attn = torch.nn.Linear(2, 2)
    with pytest.raises(HeatmapError, match="my-vit: block 0 uses Linear"):
        with capture(model, "my-vit"):
            pass
    assert all(p.requires_grad for p in model.parameters())
