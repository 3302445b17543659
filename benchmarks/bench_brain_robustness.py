"""The packaged brain model on what real MR looks like (issue 14 §6; ``../shared/specs/robust-brain.md``):
noise over the whole field of view (Gaussian, Rician), a T2-like contrast, empty and near-empty
slices around the head. Prints GM / WM Dice through ``segment()`` against the goals a robust model
(v2) must meet; v1 is known to fail them.

    .venv/bin/python benchmarks/bench_brain_robustness.py [--model NAME]
"""

from __future__ import annotations

import argparse

import numpy as np

GOALS = {
    "rotated 10 deg + noise 2 % everywhere": "GM, WM >= 0.85",
    "Rician noise 3 %": "GM, WM >= 0.85",
    "T2-like": "GM, WM >= 0.80",
    "T2-like + noise 2 %": "GM, WM >= 0.80",
    "12 empty + 12 ripple slices": "0 tissue voxels in them",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="brain-tissue-t1")
    args = parser.parse_args(argv)
    from medloop.app.engine.metrics import dice_per_class
    from medloop.app.samples import load_brain_sample
    from medloop.models.variants import robustness_variants
    from medloop.plugins.segmentation.method import SegmentParams, segment

    t1, tissue = load_brain_sample()
    print(f"model {args.model}")
    print(f"{'variant':40s} {'GM':>6s} {'WM':>6s}  {'tissue in added slices':>22s}  goal")
    for name, (image, labels) in robustness_variants(t1, tissue).items():
        pred = np.asarray(segment(image, SegmentParams(args.model, device="cpu")).labels.array)
        dice = dice_per_class(pred, np.asarray(labels.array), 3)
        added = int((pred[:12] > 0).sum() + (pred[-12:] > 0).sum()) if "slices" in name else None
        print(f"{name:40s} {dice[1]:6.3f} {dice[2]:6.3f}  {'' if added is None else added:>22}  {GOALS[name]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
