"""A convolutional patch embedding for the demo classifier.

A ViT trained from scratch on a few minutes of CPU learns far faster when its
patches are embedded by a few small strided convolutions instead of one large
linear projection (Xiao et al., "Early Convolutions Help Transformers See
Better", 2021). The grid is the same as a plain patch embedding's (each token
is one 8x8 patch of the input), and the transformer blocks, which the
explainers read, are timm's own.
"""

from __future__ import annotations

from torch import nn
from timm.layers import PatchEmbed


class ConvStemPatchEmbed(PatchEmbed):
    """timm's ``PatchEmbed`` whose projection is three stride-2 3x3 convolutions and a 1x1.

    Takes the arguments of ``PatchEmbed``; ``patch_size`` must be 8 (the
    three stride-2 convolutions).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if tuple(self.patch_size) != (8, 8):
            raise ValueError("the convolutional stem makes 8x8 patches")
        in_chans, embed_dim = self.proj.in_channels, self.proj.out_channels
        widths = (in_chans, embed_dim // 4, embed_dim // 2, embed_dim)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.GELU()]
        self.proj = nn.Sequential(*layers, nn.Conv2d(embed_dim, embed_dim, 1))
