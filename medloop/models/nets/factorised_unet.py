"""Volumetric U-Net with each 3-D convolution factorised into 2-D ones (Avetisian, seed 001).

The paper's convolution block is four 2-D 3x3 convolutions "along different axes", each followed
by ReLU and dropout (36 weights per channel pair instead of 54 for the two 3x3x3 convolutions of a
3-D U-Net block); 30 channels in the first block, doubling after each max-pooling; up-convolutions
with a 1x1 kernel; no batch normalisation (the paper found it unstable); dropout again right
before the 1x1 output layer; inputs of size 2**3 * n, i.e. three poolings.

A 2-D convolution along two axes of a volume is a 3-D convolution whose kernel has size 1 on the
third axis: (1,3,3) mixes within an axial (y, x) slice, (3,1,3) within a coronal (z, x) one,
(3,3,1) within a sagittal (z, y) one. The paper's figure giving the order is not in the text we
have; the default cycles through the three planes and returns to the axial one, since the paper's
volumes (10-15 slices of 192-256 px) carry most detail in-plane.

A transposed convolution with a 1x1x1 kernel and stride 2 (TensorFlow's ``conv3d_transpose``
with ``padding="SAME"``, the paper's framework) writes each input voxel, mixed over channels, to
the even positions of a grid twice the size and zeros elsewhere; the 2-D convolutions that follow
fill the gaps. That is what :class:`FactorisedUNet` does (PyTorch needs ``output_padding=1`` to
produce exactly twice the size).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medloop.models.nets.unet import check_divisible, check_features, he_init

PLANES = ((1, 3, 3), (3, 1, 3), (3, 3, 1), (1, 3, 3))


class FactorisedBlock(nn.Sequential):
    """One convolution per kernel in ``kernels`` (the first changes the depth), each + ReLU + dropout."""

    def __init__(self, in_channels: int, out_channels: int, kernels: Sequence[Sequence[int]], dropout: float):
        layers: list[nn.Module] = []
        cin = in_channels
        for kernel in kernels:
            k = tuple(int(s) for s in kernel)
            if len(k) != 3 or any(s < 1 or s % 2 == 0 for s in k):
                raise ValueError(f"kernels must be three odd sizes each, like (1, 3, 3), got {tuple(kernel)}")
            layers += [nn.Conv3d(cin, out_channels, k, padding=tuple(s // 2 for s in k)), nn.ReLU(inplace=True)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            cin = out_channels
        super().__init__(*layers)


class FactorisedUNet(nn.Module):
    """Seed 001's network, returning logits ``(N, out_channels, D, H, W)``.

    Args:
        in_channels, out_channels: input channels and classes.
        features: widths per level, shallowest first; the paper's 30 channels in the first block
            and three poolings by default.
        dropout: after every convolution and before the output layer; the paper's keep
            probability 0.85 is dropout 0.15.
        kernels: the convolutions of a block, in order. ``((3, 3, 3), (3, 3, 3))`` gives the
            same-width plain 3-D U-Net block, used to measure what the factorisation saves.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (30, 60, 120, 240),
        dropout: float = 0.15,
        kernels: Sequence[Sequence[int]] = PLANES,
    ):
        super().__init__()
        widths = check_features(features)
        if not kernels:
            raise ValueError("kernels must name at least one convolution per block")
        self.spatial_dims = 3
        self.divisible_by: int = 2 ** (len(widths) - 1)
        self.encoder = nn.ModuleList()
        cin = in_channels
        for width in widths:
            self.encoder.append(FactorisedBlock(cin, width, kernels, dropout))
            cin = width
        self.pool = nn.MaxPool3d(2)
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for deep, shallow in zip(widths[:0:-1], widths[-2::-1]):
            self.ups.append(nn.ConvTranspose3d(deep, shallow, kernel_size=1, stride=2, output_padding=1))
            self.decoder.append(FactorisedBlock(2 * shallow, shallow, kernels, dropout))
        self.head = nn.Sequential(nn.Dropout(dropout) if dropout else nn.Identity(), nn.Conv3d(widths[0], out_channels, 1))
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible(x, self.divisible_by, 3)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        for up, block in zip(self.ups, self.decoder):
            x = block(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)
