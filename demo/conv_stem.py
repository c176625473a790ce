"""A convolutional patch embedding for the demo models.

A ViT trained from scratch on a few minutes of CPU learns far faster when its
patches are embedded by a few small convolutions instead of one large linear
projection (Xiao et al., "Early Convolutions Help Transformers See Better",
2021). The grid is the same as a plain patch embedding's (one token per 8x8
patch of the input), and the transformer blocks, which the explainers read,
are timm's or open_clip's own.
"""

from __future__ import annotations

from typing import Any

from timm.layers import PatchEmbed
from torch import nn

PATCH_SIZE = 8


def conv_stem(in_chans: int, embed_dim: int) -> nn.Sequential:
    """Images ``[B, in_chans, H, W]`` -> patch features ``[B, embed_dim, H/8, W/8]``.

    Three stride-2 3x3 convolutions make the 8x8 patches; one more 3x3
    convolution at the patch grid widens each token's view from 15 to 31
    pixels, the size of a whole shape; a 1x1 convolution projects.
    """
    widths = (in_chans, embed_dim // 4, embed_dim // 2, embed_dim)
    layers: list[nn.Module] = []
    for c_in, c_out in zip(widths[:-1], widths[1:], strict=False):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.GELU()]
    layers += [nn.Conv2d(embed_dim, embed_dim, 3, padding=1), nn.BatchNorm2d(embed_dim), nn.GELU()]
    return nn.Sequential(*layers, nn.Conv2d(embed_dim, embed_dim, 1))


# timm ships no types (mypy skips it), so its PatchEmbed is Any to the type checker.
class ConvStemPatchEmbed(PatchEmbed):  # type: ignore[misc]
    """timm's ``PatchEmbed`` whose projection is ``conv_stem``.

    Takes the arguments of ``PatchEmbed``; ``patch_size`` must be 8.
    """

    proj: nn.Module

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if tuple(self.patch_size) != (PATCH_SIZE, PATCH_SIZE):
            raise ValueError("the convolutional stem makes 8x8 patches")
        convolution = self.proj
        assert isinstance(convolution, nn.Conv2d)  # PatchEmbed's own projection
        self.proj = conv_stem(convolution.in_channels, convolution.out_channels)
