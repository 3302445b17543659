"""Paper B's metrics (spec §2.5) plus the paired PSNR that the synthetic set-up makes possible.

* SSIM: scikit-image's, window 7, K1 = 0.01, K2 = 0.03 (Paper B's "C1 = 0.01, C2 = 0.03, window 7"),
  on greyscale by default ([gap]) or per channel.
* Colour distance: the Wasserstein (earth mover's) distance between two images' pixel-value
  distributions, averaged over R, G and B; exact on the empirical distributions (no binning), in
  8-bit levels (0-255) so that numbers read like the spec's. Compare ratios, not absolute values.
* Paired PSNR against a ground truth, and the class-frequency-weighted Dice of Paper B's tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medloop.plugins.staining.checks import StainInputError, check_same_shape

WIN_SIZE, K1, K2 = 7, 0.01, 0.03


def _grey(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2gray

    return rgb2gray(np.asarray(rgb, np.float64))


def ssim(reference: np.ndarray, image: np.ndarray, grey: bool = True, data_range: float = 1.0) -> float:
    """Structural similarity of two images in [0, ``data_range``] (RGB last, or 2-D greyscale)."""
    from skimage.metrics import structural_similarity

    a, b = np.asarray(reference, np.float64), np.asarray(image, np.float64)
    check_same_shape(a, b, ("reference", "image"))
    colour = a.ndim == 3 and a.shape[-1] == 3
    if colour and grey:
        a, b = _grey(a), _grey(b)
    kwargs = {"channel_axis": -1} if colour and not grey else {}
    return float(structural_similarity(a, b, win_size=WIN_SIZE, K1=K1, K2=K2, data_range=data_range,
                                       gaussian_weights=False, **kwargs))


def psnr(reference: np.ndarray, image: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of ``image`` against ``reference``."""
    from skimage.metrics import peak_signal_noise_ratio

    a, b = np.asarray(reference, np.float64), np.asarray(image, np.float64)
    check_same_shape(a, b, ("reference", "image"))
    return float(peak_signal_noise_ratio(a, b, data_range=data_range))


def wasserstein_colour(a: np.ndarray, b: np.ndarray, scale: float = 255.0) -> float:
    """Mean over R, G, B of the 1-D Wasserstein distance between the two images' (or sets',
    given as (..., 3) arrays of any shapes) channel values, in units of ``scale`` (8-bit levels for
    [0, 1] data). WD(a, a) = 0 and WD(a, b) = WD(b, a)."""
    from scipy.stats import wasserstein_distance

    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape[-1] != 3 or y.shape[-1] != 3:
        raise StainInputError(f"colour distance needs RGB images (channels last), got shapes {x.shape} and {y.shape}")
    x, y = x.reshape(-1, 3), y.reshape(-1, 3)
    return float(np.mean([wasserstein_distance(x[:, c], y[:, c]) for c in range(3)]) * scale)


def dice_per_class(truth: np.ndarray, prediction: np.ndarray, classes: Sequence[int] | None = None) -> dict[int, float]:
    """Dice of every class in ``classes`` (default: those in either mask); 1.0 where a class is
    absent from both."""
    t, p = np.asarray(truth), np.asarray(prediction)
    check_same_shape(t, p, ("truth", "prediction"))
    labels = sorted(set(np.unique(t).tolist()) | set(np.unique(p).tolist())) if classes is None else list(classes)
    out = {}
    for c in labels:
        tc, pc = t == c, p == c
        total = int(tc.sum() + pc.sum())
        out[int(c)] = 1.0 if total == 0 else 2.0 * int(np.count_nonzero(tc & pc)) / total
    return out


def weighted_dice(truth: np.ndarray, prediction: np.ndarray, classes: Sequence[int] | None = None) -> float:
    """Paper B's class-weighted mean Dice; the weights are the classes' pixel frequencies in
    ``truth`` ([gap]: the paper does not say), so classes absent from the truth weigh nothing."""
    per_class = dice_per_class(truth, prediction, classes)
    t = np.asarray(truth)
    counts = np.array([np.count_nonzero(t == c) for c in per_class], np.float64)
    if counts.sum() == 0:
        raise StainInputError("truth has none of the classes asked for; give classes present in the truth mask")
    return float(np.dot(counts / counts.sum(), list(per_class.values())))
