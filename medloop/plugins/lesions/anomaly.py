"""Baur et al.'s spatial autoencoder, trained on healthy slices only (spec §3).

The bottleneck keeps a spatial map (8 x 8 at a 64 x 64 input), so the net is fully convolutional
and takes any side divisible by 8; :func:`reconstruct` pads other sides and crops back. The loss
is l1 + l2 + lambda_gdl * GDL, with GDL = mean over both axes of | |grad x| - |grad x_hat| | and
lambda_gdl = 0 for the first ``warmup_fraction`` of the steps (the paper: epochs 1-30 of 150).
The paper's lambda_gdl is 100 for a summed GDL; ours is a mean, so the CPU preset uses 1.0
(see :class:`AnomalyConfig`).

torch is imported at module level because the net is an ``nn.Module`` subclass; the modules that
only use results (``residual``, ``pseudolabels``) import this one inside their functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from medloop.app.engine.loop import LoopConfig, LoopResult, SeededSource, StepAt, TrainStep, train
from medloop.plugins.lesions.checks import LesionInputError, check_count, check_normalised

DIVISOR = 8  # three stride-2 convolutions


class SpatialAutoencoder(nn.Module):
    """Three stride-2 convs (``channels``) down to a ``width``-channel map at 1/8 of the input side,
    a mirrored decoder of transposed convs, and a sigmoid head (outputs in [0, 1])."""

    def __init__(self, width: int = 8, channels: Sequence[int] = (8, 16, 16)) -> None:
        super().__init__()
        chans = [int(c) for c in channels]
        if len(chans) != 3 or min(chans) < 1 or width < 1:
            raise LesionInputError(f"autoencoder needs three positive channel counts and width >= 1, got {channels} and {width}")
        down: list[nn.Module] = []
        cin = 1
        for c in chans:
            down += [nn.Conv2d(cin, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            cin = c
        down.append(nn.Conv2d(cin, width, 1))  # the spatial bottleneck: width x H/8 x W/8
        up: list[nn.Module] = [nn.Conv2d(width, cin, 1), nn.LeakyReLU(0.2)]
        for c in chans[::-1]:
            up += [nn.ConvTranspose2d(cin, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            cin = c
        up += [nn.Conv2d(cin, 1, 3, padding=1), nn.Sigmoid()]
        self.encoder = nn.Sequential(*down)
        self.decoder = nn.Sequential(*up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) with H, W divisible by 8 in, the reconstruction out (same shape)."""
        if x.shape[-1] % DIVISOR or x.shape[-2] % DIVISOR:
            raise LesionInputError(f"autoencoder input {tuple(x.shape[-2:])} must have sides divisible by {DIVISOR}; use reconstruct(), which pads")
        return self.decoder(self.encoder(x))


@dataclass(frozen=True)
class AnomalyConfig:
    """Training settings; the defaults are the spec's CPU preset (800 healthy 64 x 64 slices,
    15 epochs, Adam 1e-3, GDL off for the first 20 % of the steps)."""

    width: int = 8
    channels: tuple[int, int, int] = (8, 16, 16)
    epochs: int = 15
    steps_per_epoch: int = 50
    batch: int = 16
    lr: float = 1e-3
    warmup_fraction: float = 0.2
    gdl_weight: float = 1.0
    flip: bool = True  # random left-right flips (brains are roughly symmetric)
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["channels"] = list(self.channels)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AnomalyConfig:
        """A config from a recipe's ``train`` section; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise LesionInputError(f"anomaly training settings {unknown} are unknown; use only {sorted(known)}")
        values = dict(raw)
        if "channels" in values:
            values["channels"] = tuple(int(c) for c in values["channels"])
        return cls(**values)


def gradient_difference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """GDL: the mean over both axes of | |d x| - |d y| | (finite differences)."""
    gy = (x[..., 1:, :] - x[..., :-1, :]).abs() - (y[..., 1:, :] - y[..., :-1, :]).abs()
    gx = (x[..., :, 1:] - x[..., :, :-1]).abs() - (y[..., :, 1:] - y[..., :, :-1]).abs()
    return gy.abs().mean() + gx.abs().mean()


class HealthySampler(SeededSource):
    """Random batches (N, 1, H, W) of the healthy training images; its random state is
    checkpointed with the run."""

    def __init__(self, images: np.ndarray, batch: int, flip: bool, seed: int) -> None:
        self.images = images
        self.batch, self.flip = batch, flip
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> torch.Tensor:
        picked = self.images[self.rng.integers(len(self.images), size=self.batch)].copy()
        if self.flip:
            flips = self.rng.random(self.batch) < 0.5
            picked[flips] = picked[flips, :, ::-1]
        return torch.from_numpy(picked[:, None])



class AEStep(TrainStep):
    """One Adam step on l1 + l2 + lambda_gdl * GDL; lambda_gdl is 0 during the warm-up."""

    def __init__(self, model: SpatialAutoencoder, config: AnomalyConfig) -> None:
        self.model, self.config = model, config
        self.optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)

    def gdl_weight(self, at: StepAt) -> float:
        return 0.0 if at.done < self.config.warmup_fraction * at.total else self.config.gdl_weight

    def __call__(self, batch: torch.Tensor, at: StepAt) -> dict[str, float]:
        out = self.model(batch)
        l1 = (out - batch).abs().mean()
        l2 = ((out - batch) ** 2).mean()
        gdl = gradient_difference(out, batch)
        weight = self.gdl_weight(at)
        loss = l1 + l2 + weight * gdl
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        return {"loss": float(loss.detach()), "l1": float(l1.detach()), "gdl": float(gdl.detach()), "gdl_weight": weight}

    def state_dict(self) -> dict[str, Any]:
        return {"optimiser": self.optimiser.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimiser.load_state_dict(state["optimiser"])


def _training_stack(healthy_images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    images = [np.asarray(im, np.float32) for im in healthy_images]
    if not images:
        raise LesionInputError("no healthy training images given; give at least one 2-D healthy slice")
    shape = images[0].shape
    for i, im in enumerate(images):
        if im.ndim != 2 or im.shape != shape or shape[0] % DIVISOR or shape[1] % DIVISOR:
            raise LesionInputError(
                f"healthy training image {i} has shape {im.shape}; all must be 2-D, of one shape, sides divisible by {DIVISOR}")
        if not np.isfinite(im).all():
            raise LesionInputError(f"healthy training image {i} has NaN or infinite values; replace them first")
        check_normalised(im, f"healthy training image {i}")
    return np.stack(images)


def train_autoencoder(
    healthy_images: Sequence[np.ndarray] | np.ndarray,
    config: AnomalyConfig = AnomalyConfig(),
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint: str | None = None,
) -> LoopResult:
    """Train a :class:`SpatialAutoencoder` on healthy 2-D slices in [0, 1] through the shared loop
    (``epochs`` x ``steps_per_epoch`` steps); the result's model is in eval mode."""
    for key in ("epochs", "steps_per_epoch", "batch"):
        check_count(getattr(config, key), f"anomaly training {key}")
    if not 0.0 <= config.warmup_fraction <= 1.0 or config.lr <= 0 or config.gdl_weight < 0:
        raise LesionInputError(
            f"warmup_fraction {config.warmup_fraction}, lr {config.lr}, gdl_weight {config.gdl_weight}: "
            "give a warm-up in [0, 1], a positive lr and a non-negative GDL weight")
    sampler = HealthySampler(_training_stack(healthy_images), config.batch, config.flip, config.seed)
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        model = SpatialAutoencoder(config.width, config.channels)
    loop = LoopConfig(epochs=config.epochs, steps_per_epoch=config.steps_per_epoch, seed=config.seed,
                      checkpoint=checkpoint, resume=checkpoint is not None)
    result = train(model, sampler, AEStep(model, config), loop, progress=progress, should_stop=should_stop)
    result.model.eval()
    return result


def _pad_width(size: int) -> tuple[int, int]:
    extra = (-size) % DIVISOR
    return extra // 2, extra - extra // 2


def reconstruct(model: SpatialAutoencoder, image: np.ndarray, pad: str = "edge", batch: int = 32) -> np.ndarray:
    """The autoencoder's reconstruction of a 2-D slice (Y, X) or a stack of slices (Z, Y, X),
    float32, same shape. Sides not divisible by 8 are padded (``"edge"`` or ``"zero"``) and
    cropped back."""
    arr = np.asarray(image, np.float32)
    if arr.ndim not in (2, 3):
        raise LesionInputError(f"image has shape {arr.shape}; give a 2-D slice or a 3-D stack of axial slices (Z, Y, X)")
    if pad not in ("edge", "zero"):
        raise LesionInputError(f"padding {pad!r} is unknown; choose 'edge' or 'zero'")
    stack = arr[None] if arr.ndim == 2 else arr
    (py0, py1), (px0, px1) = _pad_width(stack.shape[1]), _pad_width(stack.shape[2])
    padded = np.pad(stack, ((0, 0), (py0, py1), (px0, px1)), mode="edge" if pad == "edge" else "constant")
    model.eval()
    outs = []
    with torch.inference_mode():
        for start in range(0, len(padded), batch):
            chunk = torch.from_numpy(np.ascontiguousarray(padded[start:start + batch]))[:, None]
            outs.append(model(chunk)[:, 0].numpy())
    out = np.concatenate(outs)[:, py0:py0 + stack.shape[1], px0:px0 + stack.shape[2]]
    return out[0] if arr.ndim == 2 else out
