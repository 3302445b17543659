"""Despeckling reflectance confocal images (Paper A stage 1, spec §1.1).

Noise model ``Y = X * N(1, sd)`` per pixel. The network (8 conv layers: 7 hidden with PReLU and
BatchNorm on layers 2-7, a 1-filter tanh head) predicts a multiplicative correction, so the clean
estimate is the input times a factor: ``x_hat = y * (1 + tanh(z))`` by default ([gap]: tanh alone
cannot be a factor near 1), or the literal ``y * tanh(z)``. Either way 0 in gives exactly 0 out.
Training minimises the MSE against the clean image as a step of the shared loop; inference adds
a 3 x 3 median, which removes the isolated noisy pixels the net leaves (the paper's replacement
for a TV loss). The net has no instance norm and BatchNorm runs in eval mode, so a tile margin of
8 px (the receptive-field radius) makes tiled inference exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medloop.app.engine.loop import LoopConfig, LoopResult, SeededSource, StepAt, TrainStep, train
from medloop.plugins.staining.checks import StainInputError, check_positive, to_unit

RESIDUALS = ("multiplicative", "literal")
RECEPTIVE_RADIUS = 8  # eight 3 x 3 convolutions


def speckle(clean: np.ndarray, sd: float = 0.2, rng: np.random.Generator | None = None) -> np.ndarray:
    """``clean * n`` with ``n ~ N(1, sd)`` drawn per pixel (float64, not clipped)."""
    check_positive(sd=sd)
    rng = np.random.default_rng() if rng is None else rng
    arr = np.asarray(clean, np.float64)
    return arr * rng.normal(1.0, sd, size=arr.shape)


class Despeckler(nn.Module):
    """Paper A's 8-layer despeckling CNN; ``width`` 64 in the paper, 32 in the CPU preset."""

    def __init__(self, width: int = 64, layers: int = 8, residual: str = "multiplicative") -> None:
        super().__init__()
        if residual not in RESIDUALS:
            raise StainInputError(f"despeckler residual {residual!r} is unknown; choose one of {', '.join(RESIDUALS)}")
        if layers < 3 or width < 1:
            raise StainInputError(f"despeckler needs at least 3 layers and 1 filter, got {layers} layers of {width}")
        self.residual = residual
        body: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.PReLU(width)]
        for _ in range(layers - 2):  # layers 2..7: conv (no bias, BN follows), BN, PReLU
            body += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.PReLU(width)]
        body += [nn.Conv2d(width, 1, 3, padding=1), nn.Tanh()]
        self.body = nn.Sequential(*body)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) noisy in, the clean estimate out (same shape)."""
        t = self.body(y)
        return y * (1.0 + t) if self.residual == "multiplicative" else y * t


@dataclass(frozen=True)
class DespeckleConfig:
    """Training settings; the defaults are the spec's §3 CPU preset (70 steps, width 32)."""

    width: int = 32
    residual: str = "multiplicative"
    steps: int = 70
    steps_per_epoch: int = 10
    crop: int = 48
    batch: int = 8
    lr: float = 5e-4
    sd: float = 0.2
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class SpeckleSampler(SeededSource):
    """Batches of (noisy, clean) random crops of clean images, flipped at random, with fresh
    speckle every time; its random state is checkpointed with the run."""

    def __init__(self, clean: list[np.ndarray], config: DespeckleConfig) -> None:
        for i, image in enumerate(clean):
            if image.ndim != 2 or min(image.shape) < config.crop:
                raise StainInputError(
                    f"training image {i} has shape {image.shape}; it must be 2-D and at least {config.crop} px a side "
                    "(the crop size): use larger images or a smaller crop")
        self.clean = [np.asarray(c, np.float32) for c in clean]
        self.config = config
        self.rng = np.random.default_rng(config.seed)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        c, rng = self.config, self.rng
        crops = []
        for _ in range(c.batch):
            image = self.clean[rng.integers(len(self.clean))]
            r, q = rng.integers(image.shape[0] - c.crop + 1), rng.integers(image.shape[1] - c.crop + 1)
            crop = image[r:r + c.crop, q:q + c.crop]
            crop = crop[::-1] if rng.random() < 0.5 else crop
            crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
        clean = np.stack(crops)[:, None].astype(np.float32)
        # Clipped like the data the net will see (images in [0, 1]).
        noisy = np.clip(speckle(clean, c.sd, rng), 0.0, 1.0).astype(np.float32)
        return torch.from_numpy(noisy), torch.from_numpy(clean)



class DespeckleStep(TrainStep):
    """One Adam step on the MSE between the net's output and the clean crops."""

    def __init__(self, model: Despeckler, lr: float) -> None:
        self.model = model
        self.optimiser = torch.optim.Adam(model.parameters(), lr=lr)

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor], at: StepAt) -> dict[str, float]:
        noisy, clean = batch
        loss = torch.nn.functional.mse_loss(self.model(noisy), clean)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        return {"loss": float(loss.detach())}

    def state_dict(self) -> dict[str, Any]:
        return {"optimiser": self.optimiser.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimiser.load_state_dict(state["optimiser"])


def train_despeckler(
    clean: list[np.ndarray],
    config: DespeckleConfig = DespeckleConfig(),
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint: str | None = None,
) -> LoopResult:
    """Train a :class:`Despeckler` on clean 2-D images in [0, 1] for ``config.steps`` steps (a step
    budget, not wall-clock); the result's model is in eval mode."""
    check_positive(steps=config.steps, steps_per_epoch=config.steps_per_epoch, lr=config.lr, batch=config.batch)
    if config.steps % config.steps_per_epoch:
        raise StainInputError(f"steps {config.steps} must be a multiple of steps per epoch {config.steps_per_epoch}")
    sampler = SpeckleSampler([to_unit(c, f"training image {i}") for i, c in enumerate(clean)], config)
    torch.manual_seed(config.seed)
    model = Despeckler(config.width, residual=config.residual)
    loop = LoopConfig(epochs=config.steps // config.steps_per_epoch, steps_per_epoch=config.steps_per_epoch,
                      seed=config.seed, checkpoint=checkpoint, resume=checkpoint is not None)
    result = train(model, sampler, DespeckleStep(model, config.lr), loop, progress=progress, should_stop=should_stop)
    result.model.eval()
    return result


def median3(image: np.ndarray) -> np.ndarray:
    """The 3 x 3 median filter (edges mirrored)."""
    from scipy.ndimage import median_filter

    return median_filter(np.asarray(image), size=3, mode="mirror")


def despeckle(image: np.ndarray, model: Despeckler, median: bool = True, name: str = "image") -> np.ndarray:
    """The despeckled ``image`` (2-D, [0, 1]; float32 out, clipped to [0, 1]): the net, then the
    3 x 3 median unless ``median=False``. One pass over the whole image; for slides use the
    engine's tiling with a margin of :data:`RECEPTIVE_RADIUS` px."""
    arr = to_unit(image, name)
    if arr.ndim != 2:
        raise StainInputError(f"{name} has shape {arr.shape}; despeckling takes one 2-D reflectance image")
    model.eval()
    with torch.inference_mode():
        out = model(torch.from_numpy(arr.astype(np.float32))[None, None])[0, 0].numpy()
    out = np.clip(out, 0.0, 1.0)
    return median3(out) if median else out


def despeckle_fn(model: Despeckler, median: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    """``despeckle`` bound to a model: the callable :func:`confocal.confocal_to_rgb` takes."""
    return lambda rcm: despeckle(rcm, model, median)
