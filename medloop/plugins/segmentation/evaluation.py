"""How a segmentation model is reported: per-class Dice on held-out variants of a labelled volume."""

from __future__ import annotations

import numpy as np

from medloop.app.io.image import MedImage
from medloop.models.variants import held_out_variants, robustness_variants


def evaluate_on_variants(
    model: str, image: MedImage, labels: MedImage, device: str = "cpu", seed: int = 2026, robustness: bool = False
) -> dict[str, dict[str, float]]:
    """Per-class Dice of ``model`` on each held-out variant (through the full segment pipeline);
    with ``robustness`` also on what real MR looks like (:func:`robustness_variants`)."""
    from medloop.app.engine.metrics import dice_per_class
    from medloop.plugins.segmentation.method import SegmentParams, segment

    variants = held_out_variants(image, labels, seed)
    if robustness:
        variants.update(robustness_variants(image, labels, seed + 1))
    table = {}
    for name, (variant, truth) in variants.items():
        result = segment(variant, SegmentParams(model, device=device))
        classes = result.provenance["classes"]
        dice = dice_per_class(np.asarray(result.labels.array), np.asarray(truth.array), len(classes))
        table[name] = {classes[k]: round(float(v), 4) for k, v in dice.items()}
    return table
