"""Stain-transforming CycleGAN (Paper B, de Bel et al.; Paper A's stage 3), on the shared loop.

Networks (spec §2.1): residual U-Net generators of depth 1-3 (one residual block per level,
max-pool down, nearest-neighbour x2 up followed by a conv that halves the width, skip concat,
instance norm and LeakyReLU 0.2 with every conv, 1 x 1 conv + tanh out), the Johnson ResNet
generator of the original CycleGAN (the baseline: 32 filters, 9 blocks, 2.86 M parameters) and
PatchGAN discriminators (70 x 70 receptive field at 3 layers). Images are RGB scaled to [-1, 1].

Training (spec §2.2): LSGAN adversarial losses, L1 cycle loss (lambda 10), L1 identity loss
(lambda0 5, annealed ``lambda0 * max(0, 1 - epoch / anneal)`` to exactly 0), Adam betas (0.5,
0.999), as one :class:`CycleGANStep` of the shared loop owning the generator and discriminator
optimisers. Patches are sampled on the fly with uniformly drawn centres inside a tissue mask
(:mod:`medloop.plugins.staining.sampling`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medloop.app.engine.loop import LoopConfig, LoopResult, StepAt, TrainStep, train
from medloop.plugins.staining.checks import StainInputError, check_positive

SLOPE = 0.2


def _conv_in(cin: int, cout: int, kernel: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.InstanceNorm2d(cout, affine=True)]


class ResBlock(nn.Module):
    """conv3-IN-LReLU-conv3-IN plus the input (1 x 1 projected when the width changes), LReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_in(cin, cout), nn.LeakyReLU(SLOPE), *_conv_in(cout, cout))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)
        self.act = nn.LeakyReLU(SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class ResUNetGenerator(nn.Module):
    """Paper B's generator: a U-Net of residual blocks, ``width`` filters at the first level,
    doubling per max-pool, halving per nearest-neighbour upsample; ``up_kernel`` is the kernel
    of the conv after each upsample (1 matches the paper's parameter counts best: 0.10 / 0.46 /
    1.89 M at depths 1/2/3 and width 32 vs the paper's 0.11 / 0.45 / 2.0 M). H and W must be
    multiples of 2**depth."""

    def __init__(self, depth: int = 3, width: int = 32, channels: int = 3, up_kernel: int = 1) -> None:
        super().__init__()
        if depth not in (1, 2, 3) or width < 1 or up_kernel not in (1, 3):
            raise StainInputError(f"U-Net generator needs depth 1-3, width >= 1, up kernel 1 or 3; got {depth}, {width}, {up_kernel}")
        self.depth = depth
        widths = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([ResBlock(channels if i == 0 else widths[i - 1], widths[i]) for i in range(depth)])
        self.bottom = ResBlock(widths[depth - 1], widths[depth])
        self.up = nn.ModuleList(
            [nn.Sequential(*_conv_in(widths[i + 1], widths[i], up_kernel), nn.LeakyReLU(SLOPE)) for i in reversed(range(depth))])
        self.merge = nn.ModuleList([ResBlock(2 * widths[i], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(width, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_multiple(x.shape[-2:], 2**self.depth)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = up(F.interpolate(x, scale_factor=2.0, mode="nearest"))
            x = merge(torch.cat([x, skip], dim=1))
        return torch.tanh(self.head(x))


def check_multiple(shape: Any, multiple: int) -> None:
    """H and W must be multiples of ``multiple`` (the U-Net's 2**depth)."""
    h, w = int(shape[0]), int(shape[1])
    if h % multiple or w % multiple:
        raise StainInputError(f"image is {h}x{w} px; the generator needs H and W that are multiples of {multiple} (pad or crop)")


class _JohnsonBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), nn.InstanceNorm2d(width), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), nn.InstanceNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNetGenerator(nn.Module):
    """The Johnson et al. generator of the original CycleGAN (c7s1-w, d2w, d4w, ``blocks`` x R4w,
    u2w, uw, c7s1-3, tanh): the baseline, 2.86 M parameters at width 32 and 9 blocks (Paper B:
    2.8 M). H and W must be multiples of 4."""

    def __init__(self, width: int = 32, blocks: int = 9, channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(channels, width, 7), nn.InstanceNorm2d(width), nn.ReLU(True)]
        for k in (1, 2):
            layers += [nn.Conv2d(width * k, width * 2 * k, 3, stride=2, padding=1), nn.InstanceNorm2d(width * 2 * k), nn.ReLU(True)]
        layers += [_JohnsonBlock(width * 4) for _ in range(blocks)]
        for k in (4, 2):
            layers += [nn.ConvTranspose2d(width * k, width * k // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(width * k // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, channels, 7), nn.Tanh()]
        self.depth = 2
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_multiple(x.shape[-2:], 4)
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al.): 4 x 4 convs, ``layers`` stride-2 ones doubling from ``width``,
    one stride-1, a 1-channel map of patch scores (70 x 70 receptive field at 3 layers). Instance
    norm and LeakyReLU 0.2 after every conv but the first (no norm) and the last."""

    def __init__(self, width: int = 64, layers: int = 3, channels: int = 3) -> None:
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(SLOPE, True)]
        cin = width
        for i in range(1, layers + 1):
            cout = width * min(2**i, 8)
            seq += [nn.Conv2d(cin, cout, 4, 1 if i == layers else 2, 1), nn.InstanceNorm2d(cout, affine=True),
                    nn.LeakyReLU(SLOPE, True)]
            cin = cout
        seq.append(nn.Conv2d(cin, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class GeneratorSpec:
    """Which generator: ``kind`` "unet" (``depth``, ``width``, ``up_kernel``) or "resnet" (``width``, ``blocks``)."""

    kind: str = "unet"
    depth: int = 2
    width: int = 16
    up_kernel: int = 1
    blocks: int = 9

    def build(self) -> nn.Module:
        if self.kind == "unet":
            return ResUNetGenerator(self.depth, self.width, 3, self.up_kernel)
        if self.kind == "resnet":
            return ResNetGenerator(self.width, self.blocks, 3)
        raise StainInputError(f"generator kind {self.kind!r} is unknown; choose 'unet' or 'resnet'")

    @property
    def multiple(self) -> int:
        return 2**self.depth if self.kind == "unet" else 4


@dataclass(frozen=True)
class CycleGANConfig:
    """Training settings; the defaults are the spec's §3 CPU preset (Paper B's batch 6 and lr
    0.008; 64 px patches; 40 steps). ``anneal_epochs``: the identity weight reaches 0 there
    (None: 20 % of the epochs); an epoch is ``steps_per_epoch`` on-the-fly batches.
    ``decay_from``: fraction of the run after which the lr decays linearly to 0 (None: constant)."""

    generator: GeneratorSpec = field(default_factory=GeneratorSpec)
    disc_width: int = 16
    disc_layers: int = 3
    patch: int = 64
    batch: int = 6
    lr: float = 0.008
    betas: tuple[float, float] = (0.5, 0.999)
    lambda_cycle: float = 10.0
    lambda_identity: float = 5.0
    epochs: int = 10
    steps_per_epoch: int = 4
    anneal_epochs: float | None = None
    decay_from: float | None = None
    seed: int = 0

    @property
    def anneal(self) -> float:
        return 0.2 * self.epochs if self.anneal_epochs is None else float(self.anneal_epochs)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def identity_weight(epoch: float, lambda0: float, anneal: float) -> float:
    """``lambda0 * max(0, 1 - epoch / anneal)``: linear to exactly 0 at ``anneal`` epochs."""
    if anneal <= 0:
        return 0.0
    return float(lambda0 * max(0.0, 1.0 - epoch / anneal))


def build_cyclegan(config: CycleGANConfig) -> nn.ModuleDict:
    """G (A->B), F (B->A) and the discriminators D_A, D_B, seeded by ``config.seed``."""
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        return nn.ModuleDict({
            "G": config.generator.build(), "F": config.generator.build(),
            "D_A": PatchDiscriminator(config.disc_width, config.disc_layers),
            "D_B": PatchDiscriminator(config.disc_width, config.disc_layers),
        })


def _lsgan(scores: torch.Tensor, real: bool) -> torch.Tensor:
    return F.mse_loss(scores, torch.full_like(scores, 1.0 if real else 0.0))


class CycleGANStep(TrainStep):
    """One CycleGAN update per call: generators first (adversarial + cycle + identity), then both
    discriminators on the detached fakes. Two Adam optimisers (G with F, D_A with D_B): Adam's
    state is per parameter, so this equals one optimiser per network."""

    def __init__(self, model: nn.ModuleDict, config: CycleGANConfig) -> None:
        self.model, self.config = model, config
        gen = [*model["G"].parameters(), *model["F"].parameters()]
        dis = [*model["D_A"].parameters(), *model["D_B"].parameters()]
        self.opt_g = torch.optim.Adam(gen, lr=config.lr, betas=config.betas)
        self.opt_d = torch.optim.Adam(dis, lr=config.lr, betas=config.betas)

    def lr_at(self, at: StepAt) -> float:
        """The constant lr, or its linear decay to 0 over the run's last part (a function of
        ``at`` only, so a resumed run gets the same values)."""
        start = self.config.decay_from
        if start is None or start >= 1:
            return self.config.lr
        left = 1.0 - at.done / max(at.total, 1)
        return self.config.lr * min(1.0, left / (1.0 - start))

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor], at: StepAt) -> dict[str, float]:
        real_a, real_b = batch
        m, c = self.model, self.config
        lam_id = identity_weight(at.done / self.config.steps_per_epoch, c.lambda_identity, c.anneal)
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = self.lr_at(at)
        fake_b, fake_a = m["G"](real_a), m["F"](real_b)
        adv = _lsgan(m["D_B"](fake_b), True) + _lsgan(m["D_A"](fake_a), True)
        cycle = F.l1_loss(m["F"](fake_b), real_a) + F.l1_loss(m["G"](fake_a), real_b)
        loss = adv + c.lambda_cycle * cycle
        identity = torch.zeros(())
        if lam_id > 0:  # skip two generator passes once the weight is 0
            identity = F.l1_loss(m["G"](real_b), real_b) + F.l1_loss(m["F"](real_a), real_a)
            loss = loss + lam_id * identity
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        d_a = 0.5 * (_lsgan(m["D_A"](real_a), True) + _lsgan(m["D_A"](fake_a.detach()), False))
        d_b = 0.5 * (_lsgan(m["D_B"](real_b), True) + _lsgan(m["D_B"](fake_b.detach()), False))
        self.opt_d.zero_grad(set_to_none=True)
        (d_a + d_b).backward()
        self.opt_d.step()
        return {"loss_G": float(loss.detach()), "adv": float(adv.detach()), "cycle": float(cycle.detach()),
                "identity": float(identity.detach()), "lambda_id": lam_id, "loss_D_A": float(d_a.detach()),
                "loss_D_B": float(d_b.detach()), "lr": self.lr_at(at)}

    def state_dict(self) -> dict[str, Any]:
        return {"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) or (N, H, W, 3) in [0, 1] -> (N, 3, H, W) in [-1, 1]."""
    arr = np.asarray(rgb, np.float32)
    arr = arr[None] if arr.ndim == 3 else arr
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2))) * 2.0 - 1.0


def to_image(tensor: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) float32 in [0, 1]."""
    return np.clip((tensor.detach().cpu().numpy().transpose(0, 2, 3, 1) + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)


def translate(rgb: np.ndarray, generator: nn.Module, multiple: int | None = None) -> np.ndarray:
    """``generator`` on one RGB image in [0, 1] (H, W, 3), reflect-padded up to a multiple of
    2**depth and cropped back; float32 in [0, 1]. One pass: slides go through the engine's tiling."""
    arr = np.asarray(rgb, np.float32)
    mult = multiple or 2 ** int(getattr(generator, "depth", 0))
    h, w = arr.shape[:2]
    pad = ((0, -h % mult), (0, -w % mult), (0, 0))
    padded = np.pad(arr, pad, mode="reflect") if any(p[1] for p in pad) else arr
    was = generator.training
    generator.eval()
    try:
        with torch.inference_mode():
            out = to_image(generator(to_tensor(padded)))[0]
    finally:
        generator.train(was)
    return out[:h, :w]


def cycle_l1(a: np.ndarray, g: nn.Module, f: nn.Module) -> float:
    """Mean |F(G(a)) - a| on [0, 1] over an RGB image (the cycle-consistency error)."""
    return float(np.mean(np.abs(translate(translate(a, g), f) - np.asarray(a, np.float32))))


def train_cyclegan(
    sampler: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    config: CycleGANConfig = CycleGANConfig(),
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint: str | None = None,
) -> LoopResult:
    """Train G, F, D_A, D_B (``result.model``, an ``nn.ModuleDict``) for ``config.epochs`` x
    ``config.steps_per_epoch`` steps on batches ``sampler() -> (a, b)`` ((N, 3, p, p) in [-1, 1],
    e.g. :class:`medloop.plugins.staining.sampling.PatchSampler`); resumes from ``checkpoint``."""
    check_positive(lr=config.lr, batch=config.batch, patch=config.patch, epochs=config.epochs,
                   steps_per_epoch=config.steps_per_epoch)
    check_multiple((config.patch, config.patch), config.generator.multiple)
    smallest = 2 ** (config.disc_layers + 2)  # instance norm needs > 1 pixel after the last conv
    if config.patch < smallest:
        raise StainInputError(
            f"patch {config.patch} px is too small for a {config.disc_layers}-layer PatchGAN; use at least {smallest}")
    model = build_cyclegan(config)
    loop = LoopConfig(epochs=config.epochs, steps_per_epoch=config.steps_per_epoch, seed=config.seed,
                      checkpoint=checkpoint, resume=checkpoint is not None)
    result = train(model, sampler, CycleGANStep(model, config), loop, progress=progress, should_stop=should_stop)
    result.model.eval()
    return result
