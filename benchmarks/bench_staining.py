"""Digital staining, in one run on scikit-image's IHC image (spec digital-staining §4, §6):

* stain transfer on the held-out quarter: paired PSNR / RGB SSIM against the true image and the
  Wasserstein colour distance to domain B of (a) the input, (b) Macenko and (c) Reinhard via
  torchstain fitted to domain B, (d) the packaged CycleGAN ``stain-transfer-ihc``; printed beside
  de Bel's WD ratio 0.23 and SSIM 0.85;
* the packaged despeckler on held-out speckle: PSNR / SSIM gain vs a 3x3 median alone (paper
  +7.78 dB / +0.289).

Seams and slide throughput: ``benchmarks/bench_stain_tiling.py``.

    python benchmarks/bench_staining.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def transfer_table() -> None:
    from medloop.plugins.staining.deconvolution import transfer_data
    from medloop.plugins.staining.evaluation import evaluate_transfer
    from medloop.plugins.staining.zoo import load_stain_model

    model = load_stain_model("stain-transfer-ihc")
    m = evaluate_transfer(model.generator("A->B"), model.generator("B->A"), transfer_data("gareau"), macenko_apply_beta=0.0)
    print("stain transfer, held-out quarter (Gareau(sim) -> IHC brightfield); truth = the real image")
    print(f"{'output':28s} {'paired PSNR dB':>15s} {'RGB SSIM':>9s} {'WD to B':>8s}")
    rows = [("input (no transfer)", m["psnr_input"], m["ssim_rgb_input"], m["wd_input"]),
            ("Macenko (torchstain)", m["psnr_macenko"], m["ssim_rgb_macenko"], m["wd_macenko"]),
            ("Reinhard (torchstain)", m["psnr_reinhard"], m["ssim_rgb_reinhard"], m["wd_reinhard"]),
            ("CycleGAN stain-transfer-ihc", m["psnr_output"], m["ssim_rgb_output"], m["wd_output"]),
            ("the true image", float("inf"), 1.0, m["wd_truth"])]
    for name, p, s, w in rows:
        print(f"{name:28s} {p:15.2f} {s:9.3f} {w:8.2f}")
    print(f"CycleGAN: WD ratio {m['wd_ratio']:.3f} (de Bel 0.23), grey SSIM(A, G(A)) {m['ssim_grey_input_output']:.3f} "
          f"(de Bel 0.85), cycle L1 {m['cycle_l1']:.3f}; PSNR vs best normaliser "
          f"{m['psnr_output'] - max(m['psnr_macenko'], m['psnr_reinhard']):+.2f} dB")


def despeckle_table() -> None:
    from medloop.plugins.staining.deconvolution import despeckle_data
    from medloop.plugins.staining.evaluation import evaluate_despeckler
    from medloop.plugins.staining.zoo import load_stain_model

    model = load_stain_model("stain-despeckle-rcm")
    _, clean, noisy = despeckle_data()  # the held-out half, speckled with a fixed seed
    m = evaluate_despeckler(model.networks["despeckler"], clean, noisy)
    print("\ndespeckler stain-despeckle-rcm, held-out half of the simulated RCM (speckle N(1, 0.2))")
    for key in ("noisy", "net", "net_median", "median"):
        print(f"{key:12s} PSNR {m[f'psnr_{key}']:6.2f} dB  SSIM {m[f'ssim_{key}']:.3f}")
    print(f"gain of the net: {m['psnr_gain_net']:+.2f} dB / {m['ssim_gain_net']:+.3f} (paper +7.78 dB / +0.289); "
          f"3x3 median alone {m['psnr_gain_median']:+.2f} dB / {m['ssim_gain_median']:+.3f}")


def main() -> int:
    import torch

    torch.set_num_threads(1)
    transfer_table()
    despeckle_table()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
