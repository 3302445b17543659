"""The measurements behind the spec's §6 checks 4 and 6, the model cards and the benchmark.

* :func:`evaluate_despeckler`: PSNR/SSIM of the noisy input, the net, the net + 3 x 3 median and
  the median alone against the clean held-out image.
* :func:`evaluate_transfer`: on the held-out quarter, the cycle L1, the Wasserstein colour
  distance to domain B before and after G (and of the true image), greyscale SSIM(A, G(A)), and
  the paired PSNR/SSIM against the ground truth x of the input, of G(A) and of Macenko and
  Reinhard fitted to domain B.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medloop.plugins.staining.deconvolution import TransferData
from medloop.plugins.staining.metrics import psnr, ssim, wasserstein_colour


def evaluate_despeckler(model: Any, clean: np.ndarray, noisy: np.ndarray) -> dict[str, float]:
    """PSNR (dB) and SSIM of noisy / net / net + median / median alone against ``clean``."""
    from medloop.plugins.staining.despeckle import despeckle, median3

    net = despeckle(noisy, model, median=False)
    outputs = {"noisy": noisy, "net": net, "net_median": median3(net), "median": median3(noisy)}
    out: dict[str, float] = {}
    for key, image in outputs.items():
        out[f"psnr_{key}"] = round(psnr(clean, image), 3)
        out[f"ssim_{key}"] = round(ssim(clean, image), 4)
    for key in ("net", "net_median", "median"):
        out[f"psnr_gain_{key}"] = round(out[f"psnr_{key}"] - out["psnr_noisy"], 3)
        out[f"ssim_gain_{key}"] = round(out[f"ssim_{key}"] - out["ssim_noisy"], 4)
    return out


def normaliser_outputs(data: TransferData, macenko_apply_beta: float = 0.15) -> dict[str, np.ndarray]:
    """Macenko and Reinhard (torchstain) fitted to domain B, applied to the held-out A, in [0, 1].

    ``macenko_apply_beta``: Macenko's stained-pixel threshold on the held-out A. A Gareau
    rendering barely absorbs blue (optical density < 0.07 there), so at torchstain's 0.15 Macenko
    finds no stained pixel in it; 0 lets it run (its best paired PSNR of 0.15/0.05/0.02/0.01/0)."""
    from medloop.plugins.staining.normalise import fit_normaliser

    out = {}
    for method in ("macenko", "reinhard"):
        fitted = fit_normaliser(data.train_b, method, "domain B")
        out[method] = fitted.apply(data.test_a, "held-out A", beta=macenko_apply_beta).astype(np.float32) / 255.0
    return out


def evaluate_transfer(g: Any, f: Any, data: TransferData, normalisers: bool = True,
                      macenko_apply_beta: float = 0.15) -> dict[str, float]:
    """The check-6 numbers of generators ``g`` (A->B) and ``f`` (B->A) on ``data``'s held-out quarter."""
    from medloop.plugins.staining.cyclegan import cycle_l1, translate

    a, x, b = data.test_a, data.test_x, data.train_b
    fake = translate(a, g)
    wd_in, wd_out = wasserstein_colour(a, b), wasserstein_colour(fake, b)
    out = {
        "cycle_l1": cycle_l1(a, g, f),
        "wd_input": wd_in, "wd_output": wd_out, "wd_ratio": wd_out / wd_in, "wd_truth": wasserstein_colour(x, b),
        "ssim_grey_input_output": ssim(a, fake),
        "psnr_input": psnr(x, a), "psnr_output": psnr(x, fake),
        "ssim_rgb_input": ssim(x, a, grey=False), "ssim_rgb_output": ssim(x, fake, grey=False),
    }
    out["psnr_gain"] = out["psnr_output"] - out["psnr_input"]
    if normalisers:
        for method, image in normaliser_outputs(data, macenko_apply_beta).items():
            out[f"psnr_{method}"] = psnr(x, image)
            out[f"ssim_rgb_{method}"] = ssim(x, image, grey=False)
            out[f"wd_{method}"] = wasserstein_colour(image, b)
    return {k: round(float(v), 4) for k, v in out.items()}
