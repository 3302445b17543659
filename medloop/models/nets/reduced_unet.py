"""Reduced-complexity residual U-Net for liver lesions (Pandey, Vasan & Ramakrishnan, seed 003).

What the paper specifies, and where it lives here:

* every convolution is depthwise separable (a per-channel k x k conv, then a 1x1 conv);
* ResNet-like blocks of two such convolutions, the first changing the depth and the second
  keeping it, with the input added back through a 1x1 "bottleneck" projection when the depth
  changes;
* a normalisation layer before every block (the paper's BatchNorm; GroupNorm by default here,
  see :class:`~medloop.models.nets.unet.UNet`) and dropout 0.05;
* max-pooling in the encoder, parameter-free upsampling in the decoder: bilinear interpolation
  for all but the last step, which is a sub-pixel layer (``PixelShuffle``: it rearranges 4 channels
  into a 2x2 patch, so it trades depth for resolution without weights);
* long skip connections concatenated to the upsampled maps.

The paper gives the depth as "64 ... reaching 1024 in the innermost layer" and the count as
~2 M parameters, 13.8x fewer than U-Net. A literal 1024-wide innermost block with 1x1 layers of
1024 x 1024 already costs 2.1 M on its own (the whole network ~5.3 M), so the paper's count is only
reachable the way common bilinear U-Nets build it: since bilinear upsampling cannot halve the
channels as U-Net's up-convolution does, the innermost block is built at half width (512) and the
innermost layer is 1024 deep after concatenation with the 512-wide skip. With the paper's widths
this gives 2.06 M parameters, 15.0x fewer than the 31.0 M U-Net.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from medloop.models.nets.unet import check_divisible, check_features, he_init, make_norm


class SeparableConv2d(nn.Sequential):
    """Depthwise k x k convolution (no bias: the pointwise bias follows) then a 1x1 convolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1),
        )


class ResidualSeparableBlock(nn.Module):
    """norm -> sepconv (depth change) -> ReLU -> sepconv -> dropout, plus shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: str | None, dropout: float, kernel_size: int = 3):
        super().__init__()
        self.norm = make_norm(norm, 2, in_channels)
        self.conv1 = SeparableConv2d(in_channels, out_channels, kernel_size)
        self.conv2 = SeparableConv2d(out_channels, out_channels, kernel_size)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        # He et al.'s projection shortcut: a 1x1 conv only where the depth changes.
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        y = self.drop(self.conv2(F.relu(self.conv1(x))))
        return F.relu(y + self.shortcut(x))


class ReducedUNet(nn.Module):
    """Seed 003's 2-D network, returning logits ``(N, out_channels, H, W)``.

    Args:
        in_channels, out_channels: input channels (the paper: 1 CT slice) and classes.
        features: widths per level, shallowest first, the paper's ``(64, 128, 256, 512, 1024)``
            by default; the innermost block is built at ``features[-1] // 2`` (module docstring).
        norm: ``"group"`` (default), ``"batch"`` (the paper's), ``"instance"`` or ``None``.
        dropout: the paper's 0.05, inside every block.
        kernel_size: of the depthwise convolutions; the paper's text says 2x2, which cannot be
            padded symmetrically (outputs would shift half a pixel against the skips), so 3 (the
            U-Net kernel it replaces) is used; it must be odd.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (64, 128, 256, 512, 1024),
        norm: str | None = "group",
        dropout: float = 0.05,
        kernel_size: int = 3,
    ):
        super().__init__()
        widths = check_features(features)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd so outputs stay aligned with the skips, got {kernel_size}")
        encoder_widths = (*widths[:-1], widths[-1] // 2)
        # Channels entering the sub-pixel step: the last bilinear decoder block outputs widths[0]
        # (or, with two levels, the innermost block feeds it directly).
        shuffled = widths[0] if len(widths) > 2 else encoder_widths[-1]
        if shuffled % 4 or encoder_widths[-1] < 1:
            raise ValueError(f"features {list(widths)}: the sub-pixel step needs a multiple of 4 channels, got {shuffled}")
        self.spatial_dims = 2
        self.divisible_by: int = 2 ** (len(widths) - 1)
        self.encoder = nn.ModuleList()
        cin = in_channels
        for i, width in enumerate(encoder_widths):
            # The paper's BatchNorm before the first block standardises the image with dataset
            # statistics; GroupNorm/InstanceNorm there would standardise each image (or tile) on
            # its own, discarding absolute intensity (HU) and varying from tile to tile.
            block_norm = norm if i > 0 or norm == "batch" else None
            self.encoder.append(ResidualSeparableBlock(cin, width, block_norm, dropout, kernel_size))
            cin = width
        self.decoder = nn.ModuleList()
        skips = encoder_widths[-2::-1]
        for i, skip in enumerate(skips):
            last = i == len(skips) - 1
            # Bilinear steps keep the depth; the sub-pixel step divides it by 4.
            upsampled = cin // 4 if last else cin
            out = widths[0] if last else skips[i + 1]
            self.decoder.append(ResidualSeparableBlock(upsampled + skip, out, norm, dropout, kernel_size))
            cin = out
        self.shuffle = nn.PixelShuffle(2)
        self.head = nn.Conv2d(cin, out_channels, 1)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible(x, self.divisible_by, 2)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for i, block in enumerate(self.decoder):
            skip = skips.pop()
            if i == len(self.decoder) - 1:
                up = self.shuffle(x)
            else:
                up = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([skip, up], dim=1))
        return self.head(x)
