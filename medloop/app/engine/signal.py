"""Inputs without signal are background by construction (issue #18 §3).

Networks with per-sample normalisation (GroupNorm, InstanceNorm) standardise every tile by its
own spread, so a near-empty slice (a ripple of a few thousandths) or a noise-only slice (MR noise
beyond the head) is stretched to the contrast of tissue and segmented as tissue. The cure is not
to ask the network: a :class:`SignalFloor` measured once on the whole normalised input says
which tiles carry no signal, and those get background without a forward pass.

torch is imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

#: Logit given to the background class (and, negated, to every other class) of a gated tile:
#: softmax then gives background a probability of 1 - 1e-26.
BACKGROUND_LOGIT = 30.0
#: Values drawn from a large input to measure its percentiles and Otsu threshold.
SAMPLE_SIZE = 1_000_000


@dataclass(frozen=True)
class SignalFloor:
    """What "no signal" means for one input.

    Attributes:
        min_range: a tile whose value range (max - min over all its channels) is below this is
            near-constant.
        noise_ceiling: a tile none of whose values exceeds this is noise-only background; None
            when the input has no dark background class (the rule is then off).
    """

    min_range: float
    noise_ceiling: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {"min_range": self.min_range, "noise_ceiling": self.noise_ceiling}


def _subsample(values: np.ndarray) -> np.ndarray:
    """All values, or a seeded draw of :data:`SAMPLE_SIZE` of them: the same input always gives
    the same floor."""
    flat = values.reshape(-1)
    if flat.size <= SAMPLE_SIZE:
        return flat
    return np.random.default_rng(0).choice(flat, SAMPLE_SIZE, replace=False)


def otsu_threshold(sample: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold, taken in the middle of the plateau of maximal between-class variance.

    When dark and bright classes are separated by empty bins every threshold in the gap splits
    them alike; scikit-image's ``threshold_otsu`` then returns the gap's first bin, right on the
    dark class's noise tail, which would put half of that tail above a ceiling derived from it.
    """
    hist, edges = np.histogram(sample, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist, dtype=np.float64)[:-1]  # split after bin i: bins 0..i are dark
    w1 = float(hist.sum()) - w0
    s0 = np.cumsum(hist * centres)[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (s0 / w0 - (float((hist * centres).sum()) - s0) / w1) ** 2
    between = np.nan_to_num(between, nan=-1.0)
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float((edges[best[0] + 1] + edges[best[-1] + 1]) / 2)


def _noise_ceiling(sample: np.ndarray, lo: float) -> float | None:
    """Half-way from the background level ``lo`` to the Otsu threshold, but only when the
    histogram has a real dark class: at least 10 % of the values, and its mean far (4 of its own
    standard deviations) below the bright class's. Half the threshold, not all of it, so that
    faint structures (CSF, partial volumes) still count as signal."""
    if not np.isfinite(sample).all() or float(sample.max()) <= float(sample.min()):
        return None
    t = otsu_threshold(sample)
    dark, bright = sample[sample <= t], sample[sample > t]
    if dark.size < 0.1 * sample.size or bright.size == 0:
        return None
    if float(bright.mean()) - float(dark.mean()) < 4.0 * float(dark.std()):
        return None
    return lo + 0.5 * (t - lo)


def signal_floor(x: np.ndarray) -> SignalFloor:
    """The :class:`SignalFloor` of a whole normalised network input ``(C, *spatial)``.

    ``min_range`` is 1 % of the input's robust range (p99.5 - p0.5), at least 1e-4 of its
    magnitude and 1e-6. The noise
    rule is for single-channel inputs only: in RGB a dark tile may well be stained tissue.
    """
    x = np.asarray(x, dtype=np.float32)
    sample = _subsample(x)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return SignalFloor(min_range=1e-6)
    lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    # 1e-4 of the values' magnitude is rounding-level, whatever the input's own spread: this is
    # what lets an image judged on its own (no volume around it) be near-constant at all.
    min_range = max(0.01 * (hi - lo), 1e-4 * max(abs(lo), abs(hi)), 1e-6)
    ceiling = _noise_ceiling(sample, lo) if x.shape[0] == 1 else None
    return SignalFloor(min_range=min_range, noise_ceiling=ceiling)


def signal_free(batch: Any, floor: SignalFloor) -> Any:
    """Boolean tensor ``(B,)``: which samples of a ``(B, C, *roi)`` batch carry no signal."""
    flat = batch.detach().reshape(batch.shape[0], -1)
    top = flat.amax(dim=1)
    free = (top - flat.amin(dim=1)).float() < floor.min_range
    if floor.noise_ceiling is not None and batch.shape[1] == 1:
        free |= top.float() <= floor.noise_ceiling
    return free


def background_logits(shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
    """Logits ``(B, K, *roi)`` that say background everywhere (K == 1: a binary logit)."""
    import torch

    out = torch.full(shape, -BACKGROUND_LOGIT, dtype=dtype, device=device)
    if shape[1] > 1:
        out[:, 0] = BACKGROUND_LOGIT
    return out


class GatedPredictor:
    """A predictor ``(B, C, *roi) -> (B, K, *roi)`` logits that does not run ``predictor`` on
    signal-free samples (they cost nothing) and gives them background logits.

    ``tiles`` and ``skipped`` count the samples seen and gated, for the provenance.
    """

    def __init__(self, predictor: Callable[[Any], Any], floor: SignalFloor, num_classes_hint: int | None = None):
        self.predictor = predictor
        self.floor = floor
        self.num_classes = num_classes_hint
        self.dtype: Any = None  # the real output's dtype, once seen
        self.tiles = 0
        self.skipped = 0

    def __call__(self, batch: Any) -> Any:
        free = signal_free(batch, self.floor)
        n_free = int(free.sum())
        self.tiles += int(batch.shape[0])
        self.skipped += n_free
        if n_free == 0:
            return self._real(batch)  # the batch itself: identical to the ungated network
        if n_free == batch.shape[0]:
            return self._all_background(batch)
        real = self._real(batch[~free])
        out = background_logits((batch.shape[0], *real.shape[1:]), real.dtype, real.device)
        out[~free.to(real.device)] = real
        return out

    def _real(self, batch: Any) -> Any:
        out = self.predictor(batch)
        self.num_classes, self.dtype = int(out.shape[1]), out.dtype
        return out

    def _all_background(self, batch: Any) -> Any:
        if self.num_classes is None:
            # K is not known yet: one sample through the network tells it (once per gate).
            probe = self._real(batch[:1])
            dtype, device = probe.dtype, probe.device
        else:
            dtype, device = self.dtype or batch.dtype, batch.device
        return background_logits((batch.shape[0], self.num_classes, *batch.shape[2:]), dtype, device)

    def provenance(self) -> dict[str, Any]:
        return {"on": True, "tiles": self.tiles, "skipped": self.skipped, **self.floor.as_dict()}


def gated_predictor(
    predictor: Callable[[Any], Any], floor: SignalFloor, num_classes_hint: int | None = None
) -> GatedPredictor:
    """``predictor`` behind the signal gate of ``floor`` (see :class:`GatedPredictor`)."""
    return GatedPredictor(predictor, floor, num_classes_hint)


def background_where_no_signal(
    labels: np.ndarray, x: np.ndarray, floor: SignalFloor, slice_axis: int | None = None
) -> np.ndarray:
    """``labels`` (``x``'s spatial shape) with class 0 wherever ``x`` ``(C, *spatial)`` carries
    no signal: in every signal-free slice along ``slice_axis`` (a spatial axis), or everywhere
    when ``slice_axis`` is None and the whole image is signal-free. Returns a copy only when
    something changed."""
    import torch

    if slice_axis is None:
        units = torch.from_numpy(np.ascontiguousarray(x, np.float32))[None]
    else:
        moved = np.moveaxis(np.asarray(x, np.float32), 1 + slice_axis, 0)  # (S, C, ...)
        units = torch.from_numpy(np.ascontiguousarray(moved))
    free = signal_free(units, floor).numpy()
    if not free.any():
        return labels
    out = np.array(labels, copy=True)
    if slice_axis is None:
        out[...] = 0
    else:
        np.moveaxis(out, slice_axis, 0)[free] = 0
    return out
