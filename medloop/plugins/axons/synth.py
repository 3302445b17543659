"""Synthetic axon images (Dai et al. §"synthetic data"; our [D] defaults from the spec).

One axon per image: an angle-limited random walk from a border to a border, a cubic smoothing
spline through it resampled every 0.5 px (the centreline), an intensity profile a*exp(-d^2/2w^2)
around it on a flat background, plus noise. Presets: SI (standard), SI-RC (reduced contrast),
SI-W (wider axon), SI-EN (extra noise), SI-SN (structured, Poisson noise) and SI-REAL (the realism
mode: gamma-distributed background as fitted to the real microscopy data, Gaussian PSF blur).
Everything is drawn from the ``rng`` given, so a seed gives the same axon every time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from medloop.plugins.axons.checks import MIN_SIDE, TracingInputError
from medloop.plugins.axons.geometry import arc_length, distance_map, resample, unit


@dataclass(frozen=True)
class AxonParams:
    """Every setting of the generator (defaults: the standard set SI)."""

    step_px: float = 4.0  # random-walk step
    max_turn_deg: float = 25.0  # heading change per step, uniform in +-max_turn_deg
    start_spread_deg: float = 60.0  # start heading: the inward border normal +- this
    border_margin_px: float = 0.5  # the walk starts and stops this far inside the image
    min_length_frac: float = 0.8  # centreline length >= this x the shorter image side
    max_length_frac: float = 1.6  # ... and <= this x the shorter side (no long curls)
    smoothing: float = 1.0  # splprep's s per walk node (px^2)
    spacing_px: float = 0.5  # centreline keypoint spacing
    amplitude: tuple[float, float] = (0.6, 1.0)  # axon peak above background, uniform
    width_px: float = 1.0  # w of the Gaussian cross-section
    background: float = 0.1
    noise: str = "gaussian"  # "gaussian" | "poisson" | "none"
    noise_sd: float = 0.1  # Gaussian noise SD
    poisson_scale: float = 20.0  # Poisson counts have mean poisson_scale * clean image
    realism: bool = False  # gamma background + PSF blur instead of flat background + noise
    gamma_shape: float = 1.934  # fitted to real data (raw units), Dai et al. App. D.1
    gamma_scale: float = 7.699
    gamma_unit: float = 1.0 / 255.0  # raw units -> image units
    psf_sigma_px: float = 1.0  # realism mode: Gaussian blur of the axon
    mask_radius_px: float = 1.5  # mask = distance <= this x width_px
    max_tries: int = 200


PRESETS: dict[str, AxonParams] = {
    "SI": AxonParams(),
    "SI-RC": AxonParams(amplitude=(0.25, 0.45)),
    "SI-W": AxonParams(width_px=2.0),
    "SI-EN": AxonParams(noise_sd=0.2),
    "SI-SN": AxonParams(noise="poisson"),
    "SI-REAL": AxonParams(realism=True),
}


class Axon(NamedTuple):
    """One synthetic image with its truth."""

    image: np.ndarray  # float32 (H, W)
    centreline: np.ndarray  # float64 (N, 2) (row, col) keypoints, gaps <= spacing_px, all inside
    mask: np.ndarray  # bool (H, W): pixels within mask_radius_px * width_px of the centreline
    start: np.ndarray  # (2,) first keypoint (the end that starts at a border)
    end: np.ndarray  # (2,) last keypoint
    direction: np.ndarray  # (2,) unit initial direction v0 (row, col)
    walk: np.ndarray  # (K, 2) the random-walk nodes the spline was fitted to
    amplitude: float  # the axon's peak intensity above background


def params_for(preset: str | AxonParams) -> AxonParams:
    """The parameters of a preset name (or the parameters themselves)."""
    if isinstance(preset, AxonParams):
        return preset
    if preset not in PRESETS:
        raise TracingInputError(f"unknown synthetic preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]


def _shape(size: int | tuple[int, int]) -> tuple[int, int]:
    shape = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if min(shape) < MIN_SIDE:
        raise TracingInputError(f"image size {shape} is below {MIN_SIDE} px; choose at least {MIN_SIDE}")
    return shape


def _random_walk(shape: tuple[int, int], p: AxonParams, rng: np.random.Generator) -> np.ndarray:
    """Nodes of an angle-limited walk from a random border point inwards until the next step
    would leave the image; a last, shorter step ends it on the border (less the margin)."""
    lo, hi = p.border_margin_px, np.array(shape, dtype=np.float64) - 1 - p.border_margin_px
    side = int(rng.integers(4))  # 0 top, 1 bottom, 2 left, 3 right
    along = rng.uniform(lo, hi[1 - side // 2])
    start = {0: (lo, along), 1: (hi[0], along), 2: (along, lo), 3: (along, hi[1])}[side]
    inward = {0: 0.0, 1: np.pi, 2: np.pi / 2, 3: -np.pi / 2}[side]  # heading 0 = +row
    heading = inward + np.deg2rad(rng.uniform(-p.start_spread_deg, p.start_spread_deg))
    nodes = [np.array(start)]
    limit = 4 * sum(shape) / p.step_px  # a walk this long is rejected anyway
    while len(nodes) < limit:
        step = np.array([np.cos(heading), np.sin(heading)])
        nxt = nodes[-1] + p.step_px * step
        if np.all(nxt >= lo) and np.all(nxt <= hi):
            nodes.append(nxt)
            heading += np.deg2rad(rng.uniform(-p.max_turn_deg, p.max_turn_deg))
            continue
        # the partial step to the border, in the current heading
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.concatenate([(lo - nodes[-1]) / step, (hi - nodes[-1]) / step])
        t = np.min(t[t > 0]) if np.any(t > 0) else 0.0
        if t > 0.25 * p.step_px:
            nodes.append(nodes[-1] + t * step)
        break
    return np.array(nodes)


def _spline(walk: np.ndarray, shape: tuple[int, int], p: AxonParams) -> np.ndarray:
    """Cubic smoothing spline through the walk, resampled every ``spacing_px``, kept inside."""
    from scipy.interpolate import splprep, splev

    tck, _ = splprep([walk[:, 0], walk[:, 1]], s=p.smoothing * len(walk), k=3)
    u = np.linspace(0.0, 1.0, 40 * len(walk))
    curve = resample(np.stack(splev(u, tck), axis=1), p.spacing_px)
    inside = (curve[:, 0] >= 0) & (curve[:, 0] <= shape[0] - 1) & (curve[:, 1] >= 0) & (curve[:, 1] <= shape[1] - 1)
    # keep the longest inside run: smoothing may push an end a fraction of a pixel out
    edges = np.flatnonzero(np.diff(np.concatenate([[0], inside.astype(np.int8), [0]])))
    runs = edges.reshape(-1, 2)
    a, b = runs[np.argmax(runs[:, 1] - runs[:, 0])]
    return curve[a:b]


def _centreline(shape: tuple[int, int], p: AxonParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    side = min(shape)
    for _ in range(p.max_tries):
        walk = _random_walk(shape, p, rng)
        if len(walk) < 5:  # splprep needs more nodes than the degree
            continue
        curve = _spline(walk, shape, p)
        length = arc_length(curve)[-1] if len(curve) > 1 else 0.0
        if p.min_length_frac * side <= length <= p.max_length_frac * side:
            return curve, walk
    raise TracingInputError(
        f"no random walk of length {p.min_length_frac:g}-{p.max_length_frac:g} x {side} px found in {p.max_tries} "
        "tries; relax min_length_frac/max_length_frac or max_turn_deg")


def _render(shape: tuple[int, int], curve: np.ndarray, p: AxonParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """(image, mask, amplitude) for a centreline."""
    from scipy.ndimage import gaussian_filter

    reach = 6.0 * p.width_px + (3.0 * p.psf_sigma_px if p.realism else 0.0)
    d = distance_map(shape, curve, max_distance=reach)  # inf far away: exp(-inf) = 0
    amplitude = float(rng.uniform(*p.amplitude))
    axon = amplitude * np.exp(-(d**2) / (2.0 * p.width_px**2))
    mask = d <= p.mask_radius_px * p.width_px
    if p.realism:
        # noise after the optics: the blur acts on the axon only, the background stays gamma
        background = rng.gamma(p.gamma_shape, p.gamma_scale, size=shape) * p.gamma_unit
        image = background + gaussian_filter(axon, p.psf_sigma_px)
    elif p.noise == "poisson":
        image = rng.poisson(p.poisson_scale * (p.background + axon)) / p.poisson_scale
    elif p.noise == "gaussian":
        image = p.background + axon + rng.normal(0.0, p.noise_sd, size=shape)
    elif p.noise == "none":
        image = p.background + axon
    else:
        raise TracingInputError(f"unknown noise {p.noise!r}; choose gaussian, poisson or none")
    return image.astype(np.float32), mask, amplitude


def make_axon(size: int | tuple[int, int], preset: str | AxonParams, rng: np.random.Generator) -> Axon:
    """One synthetic axon image of ``size`` (side or (H, W)) drawn from ``rng``."""
    p, shape = params_for(preset), _shape(size)
    curve, walk = _centreline(shape, p, rng)
    image, mask, amplitude = _render(shape, curve, p, rng)
    # v0 over the first 2 px: the keypoint-to-keypoint chord is too short to be a direction
    ahead = min(len(curve) - 1, max(1, int(round(2.0 / p.spacing_px))))
    return Axon(image, curve, mask, curve[0].copy(), curve[-1].copy(), unit(curve[ahead] - curve[0]), walk, amplitude)


def make_batch(n: int, size: int | tuple[int, int], preset: str | AxonParams, seed: int | Sequence[int]) -> list[Axon]:
    """``n`` axons; axon i depends on (seed, i) only, so a longer batch extends a shorter one."""
    children = np.random.SeedSequence(seed).spawn(int(n))
    return [make_axon(size, preset, np.random.default_rng(child)) for child in children]


def with_params(preset: str | AxonParams, **changes: object) -> AxonParams:
    """A preset with some parameters changed (``with_params("SI", noise_sd=0.0)``)."""
    return replace(params_for(preset), **changes)
