"""Plain U-Net (Ronneberger et al. 2015) in 2-D and 3-D, and the layer helpers the other nets share.

At the classic widths ``features=(64, 128, 256, 512, 1024)``, 2-D, ``norm="batch"``,
``up="transpose"`` it has 31.04 M parameters (Ronneberger's 31.03 M plus BatchNorm's scales).
Convolutions are padded ("same"), so the output has the input's spatial size whenever that size is
divisible by :attr:`UNet.divisible_by`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

NORMS = ("group", "batch", "instance", None)
UPSAMPLINGS = ("transpose", "bilinear")


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    return _pick(spatial_dims, nn.Conv2d, nn.Conv3d)


def check_spatial_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


def _pick(spatial_dims: int, two: type[nn.Module], three: type[nn.Module]) -> type[nn.Module]:
    return two if check_spatial_dims(spatial_dims) == 2 else three


def group_count(channels: int) -> int:
    """Groups for GroupNorm: as many as possible up to 32, keeping >= 4 channels per group.

    Wu & He's default of 32 groups does not divide the narrow widths of interactive models
    (8, 30, ...), so the count adapts to the width instead of failing.
    """
    per_group = min(4, channels)
    return max(g for g in range(1, min(32, channels) + 1) if channels % g == 0 and channels // g >= per_group)


def make_norm(norm: str | None, spatial_dims: int, channels: int) -> nn.Module:
    """A normalisation layer by name; ``None`` (or ``"none"``) gives an identity."""
    if norm is None or norm == "none":
        return nn.Identity()
    if norm == "group":
        return nn.GroupNorm(group_count(channels), channels)
    if norm == "batch":
        return _pick(spatial_dims, nn.BatchNorm2d, nn.BatchNorm3d)(channels)
    if norm == "instance":
        return _pick(spatial_dims, nn.InstanceNorm2d, nn.InstanceNorm3d)(channels, affine=True)
    raise ValueError(f"unknown norm {norm!r}; use one of {', '.join(map(repr, NORMS))}")


def check_features(features: Sequence[int], minimum: int = 2) -> tuple[int, ...]:
    widths = tuple(int(f) for f in features)
    if len(widths) < minimum or any(f < 1 for f in widths):
        raise ValueError(f"features must be at least {minimum} positive widths (one per level), got {list(features)}")
    return widths


def check_divisible(x: torch.Tensor, divisible_by: int, spatial_dims: int) -> None:
    """Refuse inputs the net cannot map back to their own size, with a message that says what to do."""
    if x.ndim != spatial_dims + 2:
        raise ValueError(f"expected a (batch, channels, {spatial_dims} spatial axes) tensor, got shape {tuple(x.shape)}")
    spatial = tuple(x.shape[2:])
    if any(n % divisible_by for n in spatial):
        raise ValueError(f"spatial size {spatial} must be divisible by {divisible_by}; pad the input (the tiling engine does)")


def he_init(module: nn.Module) -> None:
    """He-normal weights (std sqrt(2 / fan_in)) and zero biases for every convolution.

    Ronneberger et al. initialise U-Net this way; it keeps the activation scale through stacked
    ReLU layers, which nets without normalisation (the factorised net, ``norm=None``) need in
    order to train at all (PyTorch's default shrinks the signal layer by layer).
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ConvBlock(nn.Sequential):
    """Two 3x3(x3) convolutions, each followed by normalisation and ReLU; optional dropout."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str | None, dropout: float = 0.0):
        conv = conv_nd(spatial_dims)
        bias = norm is None  # a bias right before a normalisation is cancelled by it
        layers: list[nn.Module] = []
        for cin in (in_channels, out_channels):
            layers += [
                conv(cin, out_channels, 3, padding=1, bias=bias),
                make_norm(norm, spatial_dims, out_channels),
                nn.ReLU(inplace=True),
            ]
        if dropout:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class UpSample(nn.Module):
    """Doubles the spatial size and halves the channels.

    ``"transpose"``: Ronneberger's 2x2(x2) up-convolution. ``"bilinear"``: (tri)linear
    interpolation then a 1x1 convolution, which avoids the checkerboard artefacts of a strided
    transposed convolution; the block that follows does the spatial mixing.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, mode: str):
        super().__init__()
        if mode not in UPSAMPLINGS:
            raise ValueError(f"unknown up {mode!r}; use one of {', '.join(map(repr, UPSAMPLINGS))}")
        self.mode = mode
        self.interp = "bilinear" if spatial_dims == 2 else "trilinear"
        if mode == "transpose":
            self.conv = _pick(spatial_dims, nn.ConvTranspose2d, nn.ConvTranspose3d)(in_channels, out_channels, 2, stride=2)
        else:
            self.conv = conv_nd(spatial_dims)(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "transpose":
            return self.conv(x)
        return self.conv(F.interpolate(x, scale_factor=2, mode=self.interp, align_corners=False))


class UNet(nn.Module):
    """U-Net returning logits ``(N, out_channels, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: input channels and classes.
        features: width of each level, shallowest first; ``len(features) - 1`` poolings.
        norm: ``"group"`` (default: unlike BatchNorm it does not depend on batch statistics, which
            matters for the small, jumpy batches of interactive retraining), ``"batch"``,
            ``"instance"`` or ``None``.
        dropout: dropout probability after each block (0 = none).
        up: ``"transpose"`` (Ronneberger) or ``"bilinear"`` (interpolation + 1x1 conv).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (32, 64, 128, 256),
        norm: str | None = "group",
        dropout: float = 0.0,
        up: str = "transpose",
    ):
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        widths = check_features(features)
        self.divisible_by: int = 2 ** (len(widths) - 1)
        self.encoder = nn.ModuleList()
        cin = in_channels
        for width in widths:
            self.encoder.append(ConvBlock(spatial_dims, cin, width, norm, dropout))
            cin = width
        self.pool = _pick(spatial_dims, nn.MaxPool2d, nn.MaxPool3d)(2)
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for deep, shallow in zip(widths[:0:-1], widths[-2::-1]):
            self.ups.append(UpSample(spatial_dims, deep, shallow, up))
            self.decoder.append(ConvBlock(spatial_dims, 2 * shallow, shallow, norm, dropout))
        self.head = conv_nd(spatial_dims)(widths[0], out_channels, 1)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible(x, self.divisible_by, self.spatial_dims)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()  # the deepest level feeds the decoder directly
        for up, block in zip(self.ups, self.decoder):
            x = block(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


def _with_dims(spatial_dims: int, params: dict) -> dict:
    given = params.pop("spatial_dims", spatial_dims)
    if given != spatial_dims:
        raise ValueError(f"this architecture is {spatial_dims}-D; spatial_dims={given!r} contradicts it")
    return params


def unet2d(**params) -> UNet:
    """2-D :class:`UNet`; ``spatial_dims`` may be passed but must be 2."""
    return UNet(2, **_with_dims(2, params))


def unet3d(**params) -> UNet:
    """3-D :class:`UNet`; ``spatial_dims`` may be passed but must be 3."""
    return UNet(3, **_with_dims(3, params))
