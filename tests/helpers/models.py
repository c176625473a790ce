"""Tiny random timm ViTs and open_clip CLIPs whose attention is far from uniform."""

from __future__ import annotations

import open_clip
import torch
from timm.models.vision_transformer import VisionTransformer

TEXTS = ["a red circle", "two blue stars on grass", "cat"]


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


def tiny_clip(seed=0, pool_type="tok", quick_gelu=False):
    """A CLIP with 3-block towers on 32x32 images (4x4 grid), a 10-token context, peaked attention."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=16, quick_gelu=quick_gelu,
        vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=3, head_width=8, pool_type=pool_type),
        text_cfg=dict(context_length=10, vocab_size=49408, width=32, heads=4, layers=3))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in [*model.visual.transformer.resblocks, *model.transformer.resblocks]:
            dim = block.attn.embed_dim
            block.attn.in_proj_weight[: 2 * dim] = torch.randn(2 * dim, dim, generator=generator) * 2 / dim ** 0.5
        model.token_embedding.weight.normal_(0, 1, generator=generator)
    return model.eval()


def tokens_of(texts):
    """CLIP's tokens of ``texts`` at the tiny CLIP's context length."""
    return open_clip.get_tokenizer("ViT-B-32", context_length=10)(texts)


def random_images(count: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[count, 3, 32, 32]`` standard-normal images."""
    torch.manual_seed(seed)
    return torch.randn(count, 3, 32, 32).to(dtype)
