"""Tiny random timm ViTs whose attention is far from uniform."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer


def sharpen_attention(model: torch.nn.Module, gain: float = 2.0) -> torch.nn.Module:
    """Redraw query/key weights large enough that softmax rows are peaked.

    timm's initialisation (std 0.02) gives near-uniform attention, on which
    every method looks alike; this makes a test able to tell them apart.
    """
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in model.blocks:
            weight = block.attn.qkv.weight
            dim = weight.shape[1]
            weight[: 2 * dim] = torch.randn(2 * dim, dim, generator=generator) * gain / dim ** 0.5
    return model.eval()


def tiny_vit(seed: int = 0, **overrides) -> VisionTransformer:
    """A 3-block ViT on 32x32 images (4x4 grid of 8-pixel patches), 5 classes."""
    torch.manual_seed(seed)
    config = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=5)
    config.update(overrides)
    return sharpen_attention(VisionTransformer(**config))


@pytest.fixture
def images():
    torch.manual_seed(123)
    return torch.randn(3, 3, 32, 32)
