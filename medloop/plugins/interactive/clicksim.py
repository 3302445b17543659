"""Click simulation and the click network's input channels (spec §4.4, §5).

Training clicks follow MONAI DeepGrow: the first click is drawn with p ∝ exp(d) − 1 on the
object's Euclidean distance transform (EDT) d; each later click goes into the larger error
region (false negatives FN = ref ∧ ¬pred, false positives FP = pred ∧ ¬ref, compared by their
maximum EDT), positive in FN, drawn with the same law there. A share of clicks are deliberate
"user errors" (positive on an already-correct foreground pixel, or right at an error's edge),
and :func:`perturb` makes the "previous mask is a perturbed reference" samples (DeepEdit).
``deterministic=True`` gives the standard evaluation simulator (RITM / nnInteractive): always
the EDT maximum.

Guidance is DeepGrow's: a Gaussian blob (sigma 2 px, peak 1) per click, the maximum over the
clicks of each polarity, in its own channel. :func:`net_input` stacks the 4 input channels:
image (percentile-normalised), positive, negative, previous mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIGMA_PX = 2.0
CHANNELS = ("image", "positive", "negative", "previous")
PERCENTILES = (1.0, 99.0)


@dataclass(frozen=True)
class Click:
    """A click at ``index`` (array order, pixels; may be fractional on a resampled grid)."""

    index: tuple[float, ...]
    positive: bool


def edt_inside(mask: np.ndarray, sampling: tuple[float, ...] | None = None) -> np.ndarray:
    """EDT of ``mask`` to its boundary (in ``sampling`` units, default pixels), the array's edge
    counting as boundary (0 outside)."""
    from scipy import ndimage

    padded = np.pad(mask.astype(bool), 1)
    return ndimage.distance_transform_edt(padded, sampling=sampling)[(slice(1, -1),) * mask.ndim]


def _draw(dist: np.ndarray, rng: np.random.Generator | None) -> tuple[int, ...]:
    """The EDT maximum (``rng`` None: first in C order), else a pixel with p ∝ exp(d) − 1."""
    if rng is None:
        return tuple(int(i) for i in np.unravel_index(int(np.argmax(dist)), dist.shape))
    flat = dist.ravel()
    top = float(flat.max())
    weights = np.where(flat > 0, np.exp(flat - top) - np.exp(-top), 0.0)  # (exp(d) - 1) / exp(top)
    weights = weights if weights.sum() > 0 else (flat > 0).astype(float)
    pick = rng.choice(flat.size, p=weights / weights.sum())
    return tuple(int(i) for i in np.unravel_index(int(pick), dist.shape))


def first_click(target: np.ndarray, rng: np.random.Generator | None = None) -> Click:
    """The first (positive) click: p ∝ exp(d) − 1 on the target's EDT, or its maximum (``rng`` None)."""
    if not target.any():
        raise ValueError("the target is empty: there is nothing to click")
    return Click(_draw(edt_inside(target), rng), True)


def error_regions(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FN, FP) = (ref ∧ ¬pred, pred ∧ ¬ref)."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    return ref & ~pred, pred & ~ref


def next_click(pred: np.ndarray, ref: np.ndarray, rng: np.random.Generator | None = None,
               user_error: float = 0.0) -> Click | None:
    """A click in the larger error region (by maximum EDT), positive in FN; None when there is
    no error. With ``rng``, the pixel follows p ∝ exp(d) − 1 and with probability
    ``user_error`` the click is a user error (see the module docstring)."""
    fn, fp = error_regions(pred, ref)
    d_fn, d_fp = edt_inside(fn), edt_inside(fp)
    if d_fn.max() == 0 and d_fp.max() == 0:
        return None
    positive = bool(d_fn.max() >= d_fp.max())
    dist = d_fn if positive else d_fp
    if rng is not None and rng.random() < user_error:
        correct = pred.astype(bool) & ref.astype(bool)
        if correct.any() and rng.random() < 0.5:  # positive on foreground that is already right
            return Click(_draw(correct.astype(float), rng), True)
        edge = (dist > 0) & (dist <= 1.5)  # right at the error's edge
        return Click(_draw(edge.astype(float), rng), positive)
    return Click(_draw(dist, rng), positive)


def perturb(ref: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible earlier prediction of ``ref``: grown or shrunk 1-3 px, with a random blob
    added or removed (never empty unless ``ref`` is)."""
    from scipy import ndimage

    out = ref.astype(bool)
    radius = int(rng.integers(1, 4))
    out = ndimage.binary_dilation(out, iterations=radius) if rng.random() < 0.5 else ndimage.binary_erosion(out, iterations=radius)
    yy, xx = np.mgrid[: ref.shape[0], : ref.shape[1]]
    pts = np.argwhere(ndimage.binary_dilation(ref.astype(bool), iterations=4))
    if len(pts):
        cy, cx = pts[rng.integers(len(pts))]
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(2, 8) ** 2
        out = out | blob if rng.random() < 0.5 else out & ~blob
    return out if out.any() or not ref.any() else ref.astype(bool).copy()


def guidance(shape: tuple[int, int], clicks: list[Click] | tuple[Click, ...], sigma: float = SIGMA_PX) -> np.ndarray:
    """(2, H, W) float32 positive and negative guidance: the maximum of unit-peak Gaussians."""
    out = np.zeros((2, *shape), np.float32)
    yy = np.arange(shape[0], dtype=np.float32)[:, None]
    xx = np.arange(shape[1], dtype=np.float32)[None, :]
    for c in clicks:
        blob = np.exp(-((yy - c.index[0]) ** 2 + (xx - c.index[1]) ** 2) / (2 * sigma**2))
        channel = 0 if c.positive else 1
        np.maximum(out[channel], blob, out=out[channel])
    return out


def normalise(image: np.ndarray) -> np.ndarray:
    """The image channel: percentiles (1, 99) of the crop mapped to (0, 1), clipped to [0, 1]."""
    lo, hi = np.percentile(image, PERCENTILES)
    return np.clip((image - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)


def net_input(image: np.ndarray, clicks: list[Click] | tuple[Click, ...], previous: np.ndarray) -> np.ndarray:
    """(4, H, W) float32: normalised image, positive and negative guidance, previous mask."""
    return np.concatenate([normalise(image)[None], guidance(image.shape, clicks), previous[None].astype(np.float32)])
