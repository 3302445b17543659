"""UNIT (Liu et al. 2017) at CPU scale: the healthy-bone -> lesion patch translator of Gupta et al. (spec §1).

Two VAE-GANs, one per domain (h: healthy, l: lesion). Each encoder is a 7 x 7 conv, ``downsamplings``
stride-2 convs and ``private_blocks`` residual blocks of its own, then ``res_blocks`` residual blocks
that are *the same modules* in E_h and E_l; each generator starts with ``res_blocks`` residual blocks
shared between G_h and G_l, then its own blocks, nearest x2 upsample + 5 x 5 convs (layer norm) and a
7 x 7 conv with tanh. The shared layers tie both domains to one latent space. As in the UNIT code the
encoder gives the latent mean ``mu`` and the code is ``mu + N(0, I)`` in training, so the KL term is
``mean(mu**2)``. Discriminators are multi-scale LSGAN ones. Translation ``x_h->l = G_l(E_h(x_h))``
uses the mean (deterministic). Images are single-channel, [0, 1] outside and [-1, 1] inside the nets.

Loss of one E/G update (UNIT's, weights ``gan`` / ``recon`` / ``kl`` / ``cycle`` / ``cycle_kl``): LSGAN
on both translations, L1 self-reconstruction, KL of both codes, L1 cycle reconstruction and the KL of
the translated images' codes. :class:`UnitStep` does one D update, then one E/G update, per batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medloop.app.engine.loop import LoopConfig, LoopResult, SeededSource, StepAt, TrainStep, train
from medloop.plugins.lesions.checks import LesionInputError


@dataclass(frozen=True)
class UnitConfig:
    """UNIT settings; defaults are the spec's CPU-scale version (width 8, 2 downsamplings, 1 shared
    residual block per side, 32 px patches, batch 8, Adam 1e-4 (0.5, 0.999), UNIT's loss weights,
    3-scale LSGAN discriminators). ``steps`` must be a multiple of ``steps_per_epoch`` (one
    checkpoint per epoch). ``flip``: random left-right / up-down flips of the training patches."""

    width: int = 8
    downsamplings: int = 2
    res_blocks: int = 1
    private_blocks: int = 0
    size: int = 32
    batch: int = 8
    steps: int = 1500
    steps_per_epoch: int = 100
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    gan: float = 1.0
    recon: float = 10.0
    kl: float = 0.01
    cycle: float = 10.0
    cycle_kl: float = 0.01
    disc_width: int = 8
    disc_layers: int = 2
    disc_scales: int = 3
    flip: bool = True
    seed: int = 0
    #: Generators output a change added to their source image (x_h->l = x_h + G_l(E_h(x_h))),
    #: not a new image: Gupta et al. found residual connections in E and G helped; with an
    #: image-level skip the bone around the lesion is kept by construction (measured below).
    image_skip: bool = False

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["betas"] = list(self.betas)
        return out

    def architecture(self) -> dict[str, int]:
        """The kwargs of :func:`build_translator_modules` for this configuration."""
        return {"width": self.width, "downsamplings": self.downsamplings, "res_blocks": self.res_blocks,
                "private_blocks": self.private_blocks, "size": self.size, "image_skip": self.image_skip}


class ResBlock(nn.Module):
    """x + (conv3-IN-ReLU-conv3-IN)(x), the UNIT residual block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"), nn.InstanceNorm2d(channels, affine=True),
            nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"),
            nn.InstanceNorm2d(channels, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def shared_blocks(width: int, downsamplings: int, res_blocks: int) -> nn.Sequential:
    """The residual blocks at the latent's width (``width * 2**downsamplings``) that two branches share."""
    return nn.Sequential(*[ResBlock(width * 2**downsamplings) for _ in range(res_blocks)])


class Encoder(nn.Module):
    """conv7-IN-ReLU, ``downsamplings`` x (conv4 stride 2-IN-ReLU, doubling), private blocks, ``shared``.
    (N, 1, S, S) in [-1, 1] -> the latent mean (N, width * 2**d, S / 2**d, S / 2**d)."""

    def __init__(self, width: int, downsamplings: int, private_blocks: int, shared: nn.Module) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, width, 7, padding=3, padding_mode="reflect"),
                                   nn.InstanceNorm2d(width, affine=True), nn.ReLU()]
        for i in range(downsamplings):
            c = width * 2**i
            layers += [nn.Conv2d(c, 2 * c, 4, 2, 1, padding_mode="reflect"), nn.InstanceNorm2d(2 * c, affine=True), nn.ReLU()]
        layers += [ResBlock(width * 2**downsamplings) for _ in range(private_blocks)]
        self.private = nn.Sequential(*layers)
        self.shared = shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(self.private(x))


class Generator(nn.Module):
    """``shared``, private blocks, ``downsamplings`` x (nearest x2, conv5-LN-ReLU, halving), conv7-tanh."""

    def __init__(self, width: int, downsamplings: int, private_blocks: int, shared: nn.Module,
                 image_skip: bool = False) -> None:
        super().__init__()
        self.shared = shared
        self.image_skip = bool(image_skip)
        layers: list[nn.Module] = [ResBlock(width * 2**downsamplings) for _ in range(private_blocks)]
        for i in reversed(range(downsamplings)):
            c = width * 2 ** (i + 1)
            layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(c, c // 2, 5, padding=2, padding_mode="reflect"),
                       nn.GroupNorm(1, c // 2), nn.ReLU()]
        layers += [nn.Conv2d(width, 1, 7, padding=3, padding_mode="reflect"), nn.Tanh()]
        self.private = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.private(self.shared(z))

    def decode(self, z: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """The image for latent ``z`` of ``source``: the generator's output, or with ``image_skip``
        the source plus that output (a change), clamped to [-1, 1]."""
        out = self.forward(z)
        return torch.clamp(source + out, -1.0, 1.0) if self.image_skip else out


class MultiScaleDiscriminator(nn.Module):
    """``scales`` LSGAN discriminators on the image and its x2, x4, ... average-pooled copies; each is
    ``layers`` conv4 stride 2 + LeakyReLU 0.2 (doubling from ``width``) and a 1 x 1 conv to a score map."""

    def __init__(self, width: int = 8, layers: int = 2, scales: int = 3) -> None:
        super().__init__()
        nets = []
        for _ in range(scales):
            seq: list[nn.Module] = []
            cin = 1
            for i in range(layers):
                seq += [nn.Conv2d(cin, width * 2**i, 4, 2, 1, padding_mode="reflect"), nn.LeakyReLU(0.2)]
                cin = width * 2**i
            seq.append(nn.Conv2d(cin, 1, 1))
            nets.append(nn.Sequential(*seq))
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for net in self.nets:
            outs.append(net(x))
            x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        return outs


def _check_architecture(width: int, downsamplings: int, res_blocks: int, private_blocks: int, size: int) -> None:
    if width < 1 or downsamplings < 1 or res_blocks < 1 or private_blocks < 0:
        raise LesionInputError(
            f"UNIT needs width >= 1, downsamplings >= 1, shared res_blocks >= 1, private_blocks >= 0; "
            f"got {width}, {downsamplings}, {res_blocks}, {private_blocks}")
    if size < 2**downsamplings * 2 or size % 2**downsamplings:
        raise LesionInputError(f"patch size {size} px must be a multiple of {2**downsamplings} and at least {2**(downsamplings + 1)}")


def build_unit(config: UnitConfig) -> nn.ModuleDict:
    """E_h, E_l, G_h, G_l (encoders sharing their last blocks, generators their first) and the
    multi-scale discriminators D_h, D_l, initialised from ``config.seed``."""
    c = config
    _check_architecture(c.width, c.downsamplings, c.res_blocks, c.private_blocks, c.size)
    if c.size // 2 ** (c.disc_layers + c.disc_scales - 1) < 1:
        raise LesionInputError(
            f"patch size {c.size} px is too small for {c.disc_scales} discriminator scales of {c.disc_layers} layers; use fewer")
    with torch.random.fork_rng():
        torch.manual_seed(c.seed)
        enc = shared_blocks(c.width, c.downsamplings, c.res_blocks)
        dec = shared_blocks(c.width, c.downsamplings, c.res_blocks)
        return nn.ModuleDict({
            "E_h": Encoder(c.width, c.downsamplings, c.private_blocks, enc),
            "E_l": Encoder(c.width, c.downsamplings, c.private_blocks, enc),
            "G_h": Generator(c.width, c.downsamplings, c.private_blocks, dec, c.image_skip),
            "G_l": Generator(c.width, c.downsamplings, c.private_blocks, dec, c.image_skip),
            "D_h": MultiScaleDiscriminator(c.disc_width, c.disc_layers, c.disc_scales),
            "D_l": MultiScaleDiscriminator(c.disc_width, c.disc_layers, c.disc_scales),
        })


def build_translator_modules(width: int = 8, downsamplings: int = 2, res_blocks: int = 1, private_blocks: int = 0,
                             size: int = 32, image_skip: bool = False) -> nn.ModuleDict:
    """The inference modules E_h and G_l (what translation needs; keys match :func:`build_unit`'s).
    ``size`` is only checked here (the nets are fully convolutional)."""
    _check_architecture(width, downsamplings, res_blocks, private_blocks, size)
    enc = shared_blocks(width, downsamplings, res_blocks)
    dec = shared_blocks(width, downsamplings, res_blocks)
    return nn.ModuleDict({"E_h": Encoder(width, downsamplings, private_blocks, enc),
                          "G_l": Generator(width, downsamplings, private_blocks, dec, image_skip)})


def _lsgan(outs: list[torch.Tensor], target: float) -> torch.Tensor:
    return sum(torch.mean((o - target) ** 2) for o in outs)  # type: ignore[return-value]


class UnitStep(TrainStep):
    """One UNIT update per batch ``(healthy, lesion)`` ((N, 1, S, S) in [-1, 1]): both
    discriminators first (on translations from the current E/G), then E_h, E_l, G_h, G_l on the
    six-term loss. Two Adam optimisers (E+G, D), both checkpointed."""

    def __init__(self, model: nn.ModuleDict, config: UnitConfig) -> None:
        self.model, self.config = model, config
        gen = [p for k in ("E_h", "E_l", "G_h", "G_l") for p in model[k].parameters()]
        gen = list({id(p): p for p in gen}.values())  # the shared blocks' parameters once
        dis = [*model["D_h"].parameters(), *model["D_l"].parameters()]
        self.opt_g = torch.optim.Adam(gen, lr=config.lr, betas=config.betas)
        self.opt_d = torch.optim.Adam(dis, lr=config.lr, betas=config.betas)

    def _disc(self, x_h: torch.Tensor, x_l: torch.Tensor) -> torch.Tensor:
        m = self.model
        with torch.no_grad():
            mu_h, mu_l = m["E_h"](x_h), m["E_l"](x_l)
            x_hl = m["G_l"].decode(mu_h + torch.randn_like(mu_h), x_h)
            x_lh = m["G_h"].decode(mu_l + torch.randn_like(mu_l), x_l)
        loss = (_lsgan(m["D_h"](x_lh), 0.0) + _lsgan(m["D_h"](x_h), 1.0)
                + _lsgan(m["D_l"](x_hl), 0.0) + _lsgan(m["D_l"](x_l), 1.0))
        loss = self.config.gan * loss
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return loss.detach()

    def _gen(self, x_h: torch.Tensor, x_l: torch.Tensor) -> dict[str, torch.Tensor]:
        m, c = self.model, self.config
        mu_h, mu_l = m["E_h"](x_h), m["E_l"](x_l)
        z_h, z_l = mu_h + torch.randn_like(mu_h), mu_l + torch.randn_like(mu_l)
        x_hh, x_ll = m["G_h"].decode(z_h, x_h), m["G_l"].decode(z_l, x_l)
        x_hl, x_lh = m["G_l"].decode(z_h, x_h), m["G_h"].decode(z_l, x_l)
        mu_hl, mu_lh = m["E_l"](x_hl), m["E_h"](x_lh)
        x_hlh = m["G_h"].decode(mu_hl + torch.randn_like(mu_hl), x_hl)
        x_lhl = m["G_l"].decode(mu_lh + torch.randn_like(mu_lh), x_lh)
        parts = {
            "gan": _lsgan(m["D_l"](x_hl), 1.0) + _lsgan(m["D_h"](x_lh), 1.0),
            "recon": F.l1_loss(x_hh, x_h) + F.l1_loss(x_ll, x_l),
            "kl": torch.mean(mu_h**2) + torch.mean(mu_l**2),
            "cycle": F.l1_loss(x_hlh, x_h) + F.l1_loss(x_lhl, x_l),
            "cycle_kl": torch.mean(mu_hl**2) + torch.mean(mu_lh**2),
        }
        loss = sum(getattr(c, k) * v for k, v in parts.items())
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        self.opt_g.step()
        return {"loss_G": loss.detach(), **{k: v.detach() for k, v in parts.items()}}  # type: ignore[union-attr]

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor], at: StepAt) -> dict[str, float]:
        x_h, x_l = batch
        loss_d = self._disc(x_h, x_l)
        out = self._gen(x_h, x_l)
        return {**{k: float(v) for k, v in out.items()}, "loss_D": float(loss_d), "lr": self.config.lr}

    def state_dict(self) -> dict[str, Any]:
        return {"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])


def check_patches(patches: Any, size: int, name: str = "patches") -> np.ndarray:
    """``patches`` as finite float32 (N, size, size), N >= 1."""
    arr = np.asarray(patches)
    if arr.dtype.kind not in "uif" or arr.ndim != 3 or arr.shape[1:] != (size, size) or arr.shape[0] < 1:
        raise LesionInputError(
            f"{name} have shape {arr.shape} and dtype {arr.dtype}; expected numeric (N, {size}, {size}) with N >= 1")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise LesionInputError(f"{name} contain NaN or infinite values; replace them first")
    return arr


class PatchPairSampler(SeededSource):
    """Random batches ``(healthy, lesion)`` of (batch, 1, S, S) tensors in [-1, 1], drawn with
    replacement from the two patch sets (optionally flipped); seeded and checkpointable."""

    def __init__(self, healthy: np.ndarray, lesion: np.ndarray, batch: int, flip: bool, seed: int) -> None:
        self.sets = (healthy.astype(np.float32) * 2.0 - 1.0, lesion.astype(np.float32) * 2.0 - 1.0)
        self.batch, self.flip = batch, flip
        self.rng = np.random.default_rng(seed)

    def _draw(self, patches: np.ndarray) -> torch.Tensor:
        out = patches[self.rng.integers(len(patches), size=self.batch)]
        if self.flip:
            lr, ud = self.rng.random(self.batch) < 0.5, self.rng.random(self.batch) < 0.5
            out[lr] = out[lr][:, :, ::-1]
            out[ud] = out[ud][:, ::-1, :]
        return torch.from_numpy(np.ascontiguousarray(out[:, None]))

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._draw(self.sets[0]), self._draw(self.sets[1])



def train_unit(
    healthy_patches: np.ndarray,
    lesion_patches: np.ndarray,
    config: UnitConfig = UnitConfig(),
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint: str | None = None,
) -> LoopResult:
    """Train UNIT on unpaired (N, S, S) healthy and (M, S, S) lesion patches in [0, 1] for
    ``config.steps`` steps on the shared loop; ``result.model`` is :func:`build_unit`'s ModuleDict
    (eval mode). Resumes from ``checkpoint`` (written after every epoch) when it exists."""
    healthy = check_patches(healthy_patches, config.size, "healthy patches")
    lesion = check_patches(lesion_patches, config.size, "lesion patches")
    for name in ("batch", "steps", "steps_per_epoch"):
        if int(getattr(config, name)) < 1:
            raise LesionInputError(f"UNIT setting {name} = {getattr(config, name)}; it must be at least 1")
    if config.steps % config.steps_per_epoch:
        raise LesionInputError(
            f"UNIT steps {config.steps} is not a multiple of steps_per_epoch {config.steps_per_epoch}; change one of them")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise LesionInputError(f"UNIT learning rate {config.lr}; it must be a positive number")
    model = build_unit(config)
    sampler = PatchPairSampler(healthy, lesion, config.batch, config.flip, config.seed)
    loop = LoopConfig(epochs=config.steps // config.steps_per_epoch, steps_per_epoch=config.steps_per_epoch,
                      seed=config.seed, checkpoint=checkpoint, resume=checkpoint is not None)
    result = train(model, sampler, UnitStep(model, config), loop, progress=progress, should_stop=should_stop)
    result.model.eval()
    return result


class UnitTranslator:
    """The :class:`~medloop.plugins.lesions.translators.Translator` of a trained UNIT:
    ``x_h->l = G_l(mean of E_h(x_h))`` on (N, size, size) [0, 1] patches; deterministic (``seed``
    is accepted for the interface and unused). ``model`` holds at least ``E_h`` and ``G_l``."""

    name = "unit"

    def __init__(self, model: nn.ModuleDict | dict[str, nn.Module], size: int = 32, chunk: int = 64) -> None:
        if "E_h" not in model or "G_l" not in model:
            raise LesionInputError(f"a UNIT translator needs modules E_h and G_l; got {', '.join(model) or 'none'}")
        self.encoder, self.generator = model["E_h"], model["G_l"]
        self.size, self.chunk = int(size), int(chunk)

    def translate(self, patches: np.ndarray, seed: int = 0) -> np.ndarray:
        """(N, size, size) healthy patches in [0, 1] -> (N, size, size) float32 lesion patches in [0, 1]."""
        arr = check_patches(patches, self.size)
        out = np.empty_like(arr)
        modes = (self.encoder.training, self.generator.training)
        self.encoder.eval()
        self.generator.eval()
        try:
            with torch.inference_mode():
                for i in range(0, len(arr), self.chunk):
                    x = torch.from_numpy(arr[i:i + self.chunk, None]) * 2.0 - 1.0
                    y = self.generator.decode(self.encoder(x), x)
                    out[i:i + self.chunk] = ((y[:, 0].numpy() + 1.0) / 2.0)
        finally:
            self.encoder.train(modes[0])
            self.generator.train(modes[1])
        return np.clip(out, 0.0, 1.0).astype(np.float32)


def load_unit_translator(state_dict: dict[str, torch.Tensor], kwargs: dict[str, Any]) -> UnitTranslator:
    """A :class:`UnitTranslator` from saved weights (keys ``E_h.…``, ``G_l.…``; extra modules'
    keys are ignored) and :func:`build_translator_modules`'s ``kwargs``."""
    try:
        modules = build_translator_modules(**kwargs)
    except TypeError as exc:
        raise LesionInputError(f"UNIT architecture settings {kwargs} are not valid: {exc}") from None
    state = {k: v for k, v in state_dict.items() if k.split(".", 1)[0] in modules}
    try:
        modules.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise LesionInputError(
            f"UNIT weights do not fit the architecture {kwargs} ({first}); use the kwargs the weights were trained with") from None
    modules.eval()
    return UnitTranslator(modules, int(kwargs.get("size", 32)))
