"""Held-out variants of a labelled volume, as other scanners and sessions would produce them:
other spacings (including thick slices), head rotation with bias field and noise, and another
intensity range. Used to validate and report the bundled models (the segmentation plugin's
``evaluation``), and by the tests."""

from __future__ import annotations

import numpy as np

from medloop.app.io.image import MedImage


def resample_pair(image: MedImage, labels: MedImage, spacing: tuple[float, float, float]) -> tuple[MedImage, MedImage]:
    """Image (linear) and labels (nearest) resampled to ``spacing`` over the same extent."""
    import SimpleITK as sitk

    from medloop.app.io.sitk_convert import from_sitk, to_sitk

    img = to_sitk(image)
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(img.GetSize(), img.GetSpacing(), spacing)]
    centre = img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in img.GetSize()])
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    origin = np.asarray(centre) - d @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2)
    args = (size, sitk.Transform(), None, origin.tolist(), tuple(spacing), img.GetDirection())

    def run(x, interp):
        return sitk.Resample(x, args[0], args[1], interp, args[3], args[4], args[5], 0, x.GetPixelID())

    return from_sitk(run(img, sitk.sitkLinear)), from_sitk(run(to_sitk(labels), sitk.sitkNearestNeighbor))


def rotate_pair(image: MedImage, labels: MedImage, degrees: float, axis=(1.0, 0.3, 0.2)) -> tuple[MedImage, MedImage]:
    """The head turned by ``degrees`` about ``axis`` through the volume centre, on the same grid."""
    import SimpleITK as sitk

    from medloop.app.io.sitk_convert import from_sitk, to_sitk

    img = to_sitk(image)
    centre = img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in img.GetSize()])
    transform = sitk.VersorRigid3DTransform()
    transform.SetCenter(centre)
    unit = np.asarray(axis, float) / np.linalg.norm(axis)
    transform.SetRotation(unit.tolist(), float(np.deg2rad(degrees)))
    rotated = sitk.Resample(img, img, transform, sitk.sitkLinear, 0, img.GetPixelID())
    rotated_labels = sitk.Resample(to_sitk(labels), img, transform, sitk.sitkNearestNeighbor, 0)
    return from_sitk(rotated), from_sitk(rotated_labels)


def bias_and_noise(image: MedImage, rng: np.random.Generator, bias: float = 0.25, noise: float = 0.03) -> MedImage:
    """A smooth multiplicative bias field (up to ±``bias``) and Gaussian noise (``noise`` × the
    99th percentile), kept in the image's dtype."""
    a = np.asarray(image.array, dtype=np.float32)
    axes = [np.linspace(-1, 1, n) for n in a.shape]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    c = rng.uniform(-1, 1, size=6)
    field = c[0] * xx + c[1] * yy + c[2] * zz + c[3] * xx * yy + c[4] * yy * zz + c[5] * xx * zz
    field = 1 + bias * field / max(np.abs(field).max(), 1e-6)
    scale = float(np.percentile(a[a > a.min()], 99)) if np.any(a > a.min()) else 1.0
    noisy = a * field + rng.normal(0, noise * scale, size=a.shape) * (a > a.min())
    dtype = np.asarray(image.array).dtype
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        noisy = np.clip(np.round(noisy), info.min, info.max)
    return image.with_array(noisy.astype(dtype))


def held_out_variants(image: MedImage, labels: MedImage, seed: int = 2026) -> dict[str, tuple[MedImage, MedImage]]:
    """The four held-out variants the bundled brain model is reported on."""
    rng = np.random.default_rng(seed)
    rotated, rotated_labels = rotate_pair(image, labels, degrees=10.0)
    rescaled = image.with_array((np.asarray(image.array, dtype=np.float32) * 2.5 + 300).astype(np.int16))
    return {
        "resampled 1.5 mm": resample_pair(image, labels, (1.5, 1.5, 1.5)),
        "thick slices 1x1x3 mm": resample_pair(image, labels, (1.0, 1.0, 3.0)),
        "rotated 10 deg + bias + noise": (bias_and_noise(rotated, rng), rotated_labels),
        "intensity x2.5 + 300": (rescaled, labels),
    }
