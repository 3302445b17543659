"""Tiny image-to-image nets for the tiling tests and benchmarks (random init, RGB -> RGB).

``TinyUNet`` follows the staining spec's generator (§2.1) at toy width: residual blocks
(conv3x3-norm-LReLU-conv3x3-norm + 1x1 projection, then LReLU), max-pool down, nearest x2 up and
a conv that halves the width, skip concatenation, a 1x1 head and tanh. With ``norm=False`` it has
no normalisation layers, so a tile's kept centre equals the whole-image output there whenever
the margin exceeds its receptive field.
"""

from __future__ import annotations

import torch
from torch import nn


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, norm: bool) -> None:
        super().__init__()
        layer = (lambda c: nn.InstanceNorm2d(c, affine=True)) if norm else (lambda c: nn.Identity())
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), layer(cout), nn.LeakyReLU(0.2),
            nn.Conv2d(cout, cout, 3, padding=1), layer(cout),
        )
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class TinyUNet(nn.Module):
    """Residual U-Net, ``depth`` pools, ``width`` filters at the top (inputs: multiples of
    2**depth)."""

    def __init__(self, channels: int = 3, out_channels: int = 3, width: int = 8, depth: int = 2,
                 norm: bool = True) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_Block(channels, widths[0], norm)])
        self.down.extend(_Block(widths[i], widths[i + 1], norm) for i in range(depth))
        self.up_conv = nn.ModuleList(nn.Conv2d(widths[i + 1], widths[i], 3, padding=1) for i in range(depth))
        self.up = nn.ModuleList(_Block(2 * widths[i], widths[i], norm) for i in range(depth))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        self.divisible_by = 2**depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(len(self.up))):
            x = self.up_conv[i](nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
            x = self.up[i](torch.cat([x, skips.pop()], dim=1))
        return torch.tanh(self.head(x))


def tiny_unet(seed: int = 0, norm: bool = True, width: int = 8, depth: int = 2) -> TinyUNet:
    """A seeded, random-init :class:`TinyUNet` in eval mode."""
    torch.manual_seed(seed)
    return TinyUNet(width=width, depth=depth, norm=norm).eval()
