"""Small seeded review cases on disk: oblique NIfTI images, box predictions, probabilities."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from medloop.app.io.image import MedImage
from medloop.app.io.write import write_image
from medloop.plugins.review.project import CaseInput
from tests.app.io.synth import OBLIQUE

SHAPE = (6, 12, 14)
SPACING = (0.8, 1.1, 2.5)  # x, y, z mm


def case_image(seed: int, shape=SHAPE, spacing=SPACING) -> MedImage:
    rng = np.random.default_rng(seed)
    return MedImage(
        array=rng.normal(100, 20, size=shape).astype(np.float32),
        spacing=spacing,
        origin=(-50.5 + seed, 20.25, -7.125),
        direction=OBLIQUE,
    )


def box_labels(shape=SHAPE, lo=(1, 3, 4), hi=(5, 9, 10), label: int = 1) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = label
    return out


def probabilities_for(labels: np.ndarray, confidence: float) -> np.ndarray:
    """Two-class probabilities (channels last) that put ``confidence`` on the given labels."""
    fg = (labels > 0).astype(np.float32)
    p1 = fg * confidence + (1 - fg) * (1 - confidence)
    return np.stack([1 - p1, p1], axis=-1).astype(np.float32)


def write_cases(folder: Path, n: int = 3, confidences=None, probabilities: bool = True) -> list[CaseInput]:
    """``n`` cases ``case<i>``: image, box prediction, reference (shifted box), probabilities whose
    confidence falls with i unless ``confidences`` says otherwise."""
    folder.mkdir(parents=True, exist_ok=True)
    confidences = confidences or [0.95 - 0.2 * i for i in range(n)]
    specs = []
    for i in range(n):
        image = case_image(i)
        img_p = folder / f"case{i}.nii.gz"
        write_image(image, img_p)
        pred = box_labels()
        write_image(image.with_array(pred), folder / f"case{i}_pred.nii.gz")
        write_image(image.with_array(box_labels(lo=(1, 4, 4))), folder / f"case{i}_ref.nii.gz")
        prob_p = None
        if probabilities:
            prob_p = folder / f"case{i}_prob.nii.gz"
            write_image(image.with_array(probabilities_for(pred, confidences[i]), channel_axis=True), prob_p)
        specs.append(
            CaseInput(
                image=img_p,
                predictions=[folder / f"case{i}_pred.nii.gz"],
                reference=folder / f"case{i}_ref.nii.gz",
                probabilities=prob_p,
                model={"model": "box-net", "model_version": "3", "weights_sha256": "ab" * 32},
            )
        )
    return specs


def shifted(image: MedImage, dx: float) -> MedImage:
    return replace(image, origin=(image.origin[0] + dx, *image.origin[1:]))
