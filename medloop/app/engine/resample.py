"""Move images between their own grid and a model's grid (orientation + spacing), and back.

A model sees every input in the orientation and spacing it was trained with; results are
resampled back onto the input's exact voxel grid, so the output overlays the input exactly.
"""

from __future__ import annotations

import numpy as np

from medloop.app.io.image import MedImage


def to_model_grid(image: MedImage, spacing: tuple[float, ...] | None, orientation: str | None) -> MedImage:
    """``image`` reoriented to ``orientation`` (ITK code, e.g. "LPS") and resampled linearly to
    ``spacing`` (x, y[, z]; None keeps the spacing, and a None entry keeps that axis' spacing,
    e.g. the slice axis of a 2-D model). The grid keeps the image's extent."""
    import SimpleITK as sitk

    from medloop.app.io.sitk_convert import from_sitk, to_sitk

    img = to_sitk(image.with_array(np.asarray(image.array, dtype=np.float32)))
    if orientation and image.ndim == 3:
        img = sitk.DICOMOrient(img, orientation)
    if spacing is not None:
        spacing = tuple(float(img.GetSpacing()[i]) if v is None else float(v) for i, v in enumerate(spacing))
    if spacing is not None and not np.allclose(img.GetSpacing(), spacing, rtol=1e-6):
        old_size = np.asarray(img.GetSize(), dtype=float)
        new_size = np.maximum(1, np.round(old_size * np.asarray(img.GetSpacing()) / np.asarray(spacing))).astype(int)
        # Centre the new grid on the old extent so resampling shifts nothing.
        extent_centre = img.TransformContinuousIndexToPhysicalPoint(((old_size - 1) / 2).tolist())
        direction = np.asarray(img.GetDirection()).reshape(img.GetDimension(), img.GetDimension())
        origin = np.asarray(extent_centre) - direction @ (np.asarray(spacing) * (new_size - 1) / 2)
        img = sitk.Resample(
            img, new_size.tolist(), sitk.Transform(), sitk.sitkLinear, origin.tolist(), tuple(spacing),
            img.GetDirection(), 0.0, sitk.sitkFloat32,
        )
    return from_sitk(img)


def probabilities_to_grid(probabilities: np.ndarray, source: MedImage, target: MedImage) -> np.ndarray:
    """Resample per-class maps (K, *source spatial) on ``source``'s grid onto ``target``'s grid
    (linear), returning (K, *target spatial) float32. Outside the source grid: background."""
    import SimpleITK as sitk

    from medloop.app.io.sitk_convert import to_sitk

    same_grid = source.shape[: source.ndim] == target.shape[: target.ndim] and np.allclose(
        source.affine_xyz(), target.affine_xyz(), atol=1e-6
    )
    if same_grid:
        return probabilities.astype(np.float32, copy=False)
    reference = to_sitk(target.with_array(np.zeros(target.shape[: target.ndim], np.uint8)))
    out = np.empty((len(probabilities), *target.shape[: target.ndim]), np.float32)
    for k, channel in enumerate(probabilities):
        moving = to_sitk(source.with_array(np.ascontiguousarray(channel, dtype=np.float32)))
        default = 1.0 if k == 0 else 0.0
        resampled = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkLinear, default)
        out[k] = sitk.GetArrayViewFromImage(resampled)  # the view needs ``resampled`` alive: copied here
    return out


def normalise(array: np.ndarray, spec: dict) -> np.ndarray:
    """Intensity normalisation named in a model card's ``inputs[0].preprocessing``.

    ``percentile``: the ``lower`` percentile of all voxels (the background level) maps to 0 and
    the ``upper`` percentile of the voxels above it to 1. Anchoring on the background, not on the
    dimmest tissue, keeps the scale the same when resampling adds partial-volume voxels at the
    edges, and a rescaled or shifted scanner range gives the same input;
    ``zscore``: zero mean, unit std; ``none``: unchanged.
    """
    x = np.asarray(array, dtype=np.float32)
    name = spec.get("name", "none")
    if name == "percentile":
        lo = float(np.percentile(x, spec.get("lower", 0.5)))
        above = x[x > lo]
        hi = float(np.percentile(above, spec.get("upper", 99.0))) if above.size else lo + 1.0
        return (x - lo) / max(hi - lo, 1e-6)
    if name == "zscore":
        return (x - x.mean()) / max(float(x.std()), 1e-6)
    return x
