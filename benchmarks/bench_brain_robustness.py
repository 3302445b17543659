"""The packaged brain models on what real MR looks like (issue 14 §6; ``../shared/specs/robust-brain.md`` §9):
noise over the whole field of view (Gaussian, Rician), a T2-like contrast, thick slices, 4 mm voxels, a
strong bias field, a head with skull, and empty, near-empty or constant slices around the head. Prints
GM / WM Dice through ``segment()`` for each model against the goals; v1 (``brain-tissue-t1``) is the
T1-only model, v2 (``brain-tissue``) the SynthSeg-style one.

    .venv/bin/python benchmarks/bench_brain_robustness.py [--models brain-tissue-t1 brain-tissue]
"""

from __future__ import annotations

import argparse

import numpy as np

GOALS = {
    "rotated 10 deg + noise 2 % everywhere": "GM, WM >= 0.85",
    "Rician noise 3 %": "GM, WM >= 0.85",
    "T2-like": "GM, WM >= 0.80",
    "T2-like + noise 2 %": "GM, WM >= 0.80",
    "axial 2x2x6 mm": "GM, WM >= 0.80",
    "4 mm isotropic": "GM, WM >= 0.80",
    "bias exp(N(0, 0.4^2)) + noise 2 %": "GM, WM >= 0.85",
    "T1 head with skull, Rician 2 %": "GM, WM >= 0.80; <= 10 mL tissue > 2 mm outside the brain",
    "12 empty + 12 ripple slices": "0 tissue voxels in them (<= 10)",
    "12 constant slices 1e-5..0.3 of WM": "0 tissue voxels in them (<= 10)",
}


def measure(model: str, name: str, image, labels) -> dict:
    """Dice GM / WM and the tissue found where there is none (added slices; outside the head's brain)."""
    from scipy import ndimage

    from medloop.app.engine.metrics import dice_per_class
    from medloop.plugins.segmentation.method import SegmentParams, segment

    pred = np.asarray(segment(image, SegmentParams(model, device="cpu")).labels.array)
    truth = np.asarray(labels.array)
    dice = dice_per_class(pred, truth, 3)
    extra = None
    if "ripple" in name:
        extra = int((pred[:12] > 0).sum() + (pred[-12:] > 0).sum())
    elif "constant" in name:
        extra = int((pred[:12] > 0).sum())
    elif "skull" in name:
        brain = ndimage.binary_fill_holes(ndimage.binary_closing(truth > 0, iterations=2))
        near = ndimage.binary_dilation(brain, iterations=1)  # + 2 mm
        extra = round(float(((pred > 0) & ~near).sum() * np.prod(image.spacing) / 1000), 1)
    return {"gm": float(dice[1]), "wm": float(dice[2]), "extra": extra}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["brain-tissue-t1", "brain-tissue"])
    args = parser.parse_args(argv)
    from medloop.app.samples import load_brain_sample
    from medloop.models.variants import held_out_variants, robustness_variants

    t1, tissue = load_brain_sample()
    variants = {**held_out_variants(t1, tissue, seed=11), **robustness_variants(t1, tissue)}
    head = f"{'variant':38s}" + "".join(f" {m[:22]:>24s}" for m in args.models) + "  goal"
    print(head + "\n" + "-" * len(head))
    for name, (image, labels) in variants.items():
        cells = []
        for model in args.models:
            r = measure(model, name, image, labels)
            extra = "" if r["extra"] is None else f" [{r['extra']}]"
            cells.append(f"{r['gm']:.3f}/{r['wm']:.3f}{extra}")
        print(f"{name:38s}" + "".join(f" {c:>24s}" for c in cells) + f"  {GOALS.get(name, 'GM, WM >= 0.85')}")
    print("[n]: tissue voxels in the added slices, or mL of tissue more than 2 mm outside the brain")
    for model in args.models:
        print(f"{model}: " + real_crop_report(model))
    return 0


def real_crop_report(model: str) -> str:
    """A8: nibabel's ``anatomical.nii`` (a real, SPM-normalised 50x82x66 mm crop of a brain with no
    background) against the MNI labels resampled into its box (an approximate prior: 105 / 141 mL)."""
    import os

    import nibabel
    import SimpleITK as sitk

    from medloop.app.engine.metrics import dice_per_class
    from medloop.app.io.read import read_image
    from medloop.app.samples import sample_path
    from medloop.plugins.segmentation.method import SegmentParams, segment

    path = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", "anatomical.nii")
    image = read_image(path)
    prior = sitk.GetArrayFromImage(sitk.Resample(
        sitk.ReadImage(str(sample_path("tissue"))), sitk.ReadImage(path), sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    pred = np.asarray(segment(image, SegmentParams(model, device="cpu")).labels.array)
    a, ml = np.asarray(image.array), float(np.prod(image.spacing)) / 1000
    dice = dice_per_class(pred, prior, 3)
    return (f"anatomical.nii GM/WM {(pred == 1).sum() * ml:.1f}/{(pred == 2).sum() * ml:.1f} mL "
            f"(prior {(prior == 1).sum() * ml:.1f}/{(prior == 2).sum() * ml:.1f}), Dice vs prior {dice[1]:.3f}/{dice[2]:.3f}, "
            f"median intensity GM {np.median(a[pred == 1]):.0f} WM {np.median(a[pred == 2]):.0f}")


if __name__ == "__main__":
    raise SystemExit(main())
