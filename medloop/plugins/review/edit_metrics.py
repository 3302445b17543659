"""How much a reviewer changed a prediction: the numbers the audit log and report carry.

Why: "accepted after editing" means little without knowing whether the edit was a few voxels or
a new segmentation; Dice, changed voxels and the volume change make that visible and comparable
across cases and models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from medloop.app.errors import ImageMismatchError
from medloop.app.io.image import MedImage

# One millilitre in the cube of each length unit MedImage knows; "px" has no physical size.
ML_PER_CUBIC_UNIT = {"mm": 1e-3, "um": 1e-12}


def voxel_volume_ml(image: MedImage) -> float | None:
    """Volume of one voxel in mL, or None where it has no physical meaning (2-D, pixel units)."""
    factor = ML_PER_CUBIC_UNIT.get(image.unit)
    if image.ndim != 3 or factor is None:
        return None
    return float(np.prod(image.spacing)) * factor


@dataclass(frozen=True)
class EditMetrics:
    """Prediction vs. saved mask. Dice is over the foreground (any label > 0); per-class Dice
    over the labels present in either; volumes are of the foreground, None without units."""

    dice: float
    dice_per_class: dict[int, float]
    voxels_changed: int  # voxels whose label differs (including changes between two classes)
    voxels_added: int  # background -> foreground
    voxels_removed: int  # foreground -> background
    volume_before_ml: float | None
    volume_after_ml: float | None
    volume_change_ml: float | None

    def to_record(self) -> dict[str, Any]:
        """Plain JSON (class keys as strings) for the audit log."""
        out = asdict(self)
        out["dice_per_class"] = {str(k): v for k, v in self.dice_per_class.items()}
        return out


def edit_metrics(prediction: np.ndarray, saved: np.ndarray, image: MedImage | None = None) -> EditMetrics:
    """Compare the model's ``prediction`` with the reviewer's ``saved`` mask (same shape).

    ``image`` supplies spacing and unit for the volumes (None: volumes are None).

    Raises:
        ImageMismatchError: the two label maps differ in shape.
    """
    from medloop.app.engine.metrics import dice_per_class

    p = np.asarray(prediction)
    s = np.asarray(saved)
    if p.shape != s.shape:
        raise ImageMismatchError(
            f"saved mask of shape {s.shape} does not match the prediction's {p.shape}; save the mask on the case's image grid"
        )
    pf, sf = p > 0, s > 0
    both = int(np.count_nonzero(pf & sf))
    sizes = int(np.count_nonzero(pf)) + int(np.count_nonzero(sf))
    dice = 1.0 if sizes == 0 else 2.0 * both / sizes
    labels = np.union1d(np.unique(p), np.unique(s)).astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ImageMismatchError("label maps with negative labels cannot be compared; use labels 0, 1, 2, ...")
    present = [int(k) for k in labels if k > 0]
    per_class: dict[int, float] = {}
    if present:
        scores = dice_per_class(p.astype(np.int64), s.astype(np.int64), int(labels.max()) + 1)
        per_class = {k: float(scores[k]) for k in present}
    voxel_ml = voxel_volume_ml(image) if image is not None else None
    before, after = int(np.count_nonzero(pf)), int(np.count_nonzero(sf))
    return EditMetrics(
        dice=float(dice),
        dice_per_class=per_class,
        voxels_changed=int(np.count_nonzero(p != s)),
        voxels_added=int(np.count_nonzero(~pf & sf)),
        voxels_removed=int(np.count_nonzero(pf & ~sf)),
        volume_before_ml=None if voxel_ml is None else before * voxel_ml,
        volume_after_ml=None if voxel_ml is None else after * voxel_ml,
        volume_change_ml=None if voxel_ml is None else (after - before) * voxel_ml,
    )
