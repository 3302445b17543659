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


def noise_everywhere(image: MedImage, rng: np.random.Generator, sigma: float = 0.02, rician: bool = False) -> MedImage:
    """Noise over the whole field of view, background included, as real MR has: Gaussian, or
    Rician (the magnitude of complex Gaussian noise); ``sigma`` is a fraction of the white-matter
    level (the 99th percentile of the non-zero voxels)."""
    a = np.asarray(image.array, dtype=np.float32)
    level = float(np.percentile(a[a > 0], 99)) if np.any(a > 0) else 1.0
    s = sigma * level
    if rician:
        noisy = np.hypot(a + rng.normal(0, s, a.shape), rng.normal(0, s, a.shape))
    else:
        noisy = a + rng.normal(0, s, a.shape)
    return image.with_array(noisy.astype(np.float32))


def t2_like(image: MedImage, labels: MedImage) -> MedImage:
    """A T2-like contrast: the T1 intensities inverted inside the brain (CSF bright, white matter
    dark), background 0."""
    from scipy import ndimage

    a = np.asarray(image.array, dtype=np.float32)
    # The brain: tissue with its enclosed CSF (the ventricles) filled in.
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(np.asarray(labels.array) > 0, iterations=2))
    top = float(np.percentile(a[brain], 99.5))
    return image.with_array(np.where(brain, np.clip(top - a, 0, None) + 0.1 * top, 0).astype(np.float32))


def with_empty_slices(image: MedImage, labels: MedImage, n: int = 12, rng: np.random.Generator | None = None) -> tuple[MedImage, MedImage]:
    """``n`` exactly-zero slices above the volume and ``n`` near-empty ones below (a ripple of
    0.5 % of the white-matter level), labelled background: a model must find no tissue there."""
    rng = rng or np.random.default_rng(0)
    a = np.asarray(image.array, dtype=np.float32)
    level = float(np.percentile(a[a > 0], 99)) if np.any(a > 0) else 1.0
    shape = (n, *a.shape[1:])
    ripple = np.abs(rng.normal(0, 0.005 * level, shape)).astype(np.float32)
    stacked = np.concatenate([ripple, a, np.zeros(shape, np.float32)])
    lab = np.asarray(labels.array)
    stacked_labels = np.concatenate([np.zeros(shape, lab.dtype), lab, np.zeros(shape, lab.dtype)])
    # The new first slice sits n slices before the old one along the slice axis.
    return _stacked(image, labels, stacked, stacked_labels, n)


def constant_slices(image: MedImage, labels: MedImage, levels: np.ndarray) -> tuple[MedImage, MedImage]:
    """One featureless slice per level (a fraction of the white-matter level) stacked under the
    volume, labelled background: the step at the tiles' zero padding must not read as an outline."""
    a = np.asarray(image.array, dtype=np.float32)
    level = float(np.percentile(a[a > 0], 99)) if np.any(a > 0) else 1.0
    n = len(levels)
    slabs = np.ones((n, *a.shape[1:]), np.float32) * (np.asarray(levels, np.float32) * level)[:, None, None]
    lab = np.asarray(labels.array)
    return _stacked(image, labels, np.concatenate([slabs, a]), np.concatenate([np.zeros(slabs.shape, lab.dtype), lab]), n)


def _stacked(image: MedImage, labels: MedImage, array: np.ndarray, label_array: np.ndarray, below: int):
    from dataclasses import replace

    origin = np.asarray(image.origin) - np.asarray(image.direction)[:, 2] * image.spacing[2] * below
    moved = {"origin": tuple(float(v) for v in origin)}
    return replace(image, array=array, **moved), replace(labels, array=label_array, **moved)


def head_with_skull(image: MedImage, labels: MedImage, rng: np.random.Generator, pad: int = 10) -> tuple[MedImage, MedImage]:
    """A semi-synthetic T1 head: the skull-stripped brain inside fixed layers (CSF 2 mm, skull
    6 mm with bright diploë in its middle third, muscle 3 mm, fat 4 mm brighter than white
    matter), ``pad`` voxels of air around, Rician noise 2 % of the white-matter level. Built here,
    independently of the synthetic heads a model may be trained on."""
    from dataclasses import replace

    from scipy import ndimage

    a = np.pad(np.asarray(image.array, dtype=np.float32), pad)
    lab = np.pad(np.asarray(labels.array), pad)
    wm = float(np.percentile(a[a > 0], 99))
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(a > 0, iterations=2))
    d = ndimage.distance_transform_edt(~brain, sampling=np.asarray(image.spacing)[::-1])
    layers = [(0, 2, 0.15), (2, 4, 0.05), (4, 6, 0.75), (6, 8, 0.05), (8, 11, 0.45), (11, 15, 1.1)]
    for lo, hi, value in layers:
        a[(d > lo) & (d <= hi)] = value * wm
    s = 0.02 * wm
    noisy = np.hypot(a + rng.normal(0, s, a.shape), rng.normal(0, s, a.shape)).astype(np.float32)
    origin = np.asarray(image.origin) - np.asarray(image.direction) @ (np.asarray(image.spacing) * pad)
    moved = {"origin": tuple(float(v) for v in origin)}
    return replace(image, array=noisy, **moved), replace(labels, array=lab, **moved)


def exp_bias_and_noise(image: MedImage, rng: np.random.Generator, sigma: float = 0.4, noise: float = 0.02) -> MedImage:
    """A strong smooth bias field exp(N(0, sigma²)) on a 4³ grid, then Gaussian noise everywhere."""
    import torch
    import torch.nn.functional as F

    a = np.asarray(image.array, dtype=np.float32)
    coarse = torch.from_numpy(rng.normal(0, sigma, (1, 1, 4, 4, 4)).astype(np.float32))
    field = np.exp(F.interpolate(coarse, size=a.shape, mode="trilinear", align_corners=True)[0, 0].numpy())
    return noise_everywhere(image.with_array((a * field).astype(np.float32)), rng, noise)


def robustness_variants(image: MedImage, labels: MedImage, seed: int = 2027) -> dict[str, tuple[MedImage, MedImage]]:
    """What real MR looks like beyond the card's variants (issue 14 §6, spec robust-brain §9):
    noise everywhere, Rician noise, a T2-like contrast, thick axial slices, 4 mm voxels, a strong
    bias field, a head with skull, and empty, near-empty or constant slices around the head."""
    rng = np.random.default_rng(seed)
    rotated, rotated_labels = rotate_pair(image, labels, degrees=10.0)
    return {
        "rotated 10 deg + noise 2 % everywhere": (noise_everywhere(rotated, rng, 0.02), rotated_labels),
        "Rician noise 3 %": (noise_everywhere(image, rng, 0.03, rician=True), labels),
        "T2-like": (t2_like(image, labels), labels),
        "T2-like + noise 2 %": (noise_everywhere(t2_like(image, labels), rng, 0.02), labels),
        "axial 2x2x6 mm": resample_pair(image, labels, (2.0, 2.0, 6.0)),
        "4 mm isotropic": resample_pair(image, labels, (4.0, 4.0, 4.0)),
        "bias exp(N(0, 0.4^2)) + noise 2 %": (exp_bias_and_noise(image, rng), labels),
        "T1 head with skull, Rician 2 %": head_with_skull(image, labels, rng),
        "12 empty + 12 ripple slices": with_empty_slices(image, labels, 12, rng),
        "12 constant slices 1e-5..0.3 of WM": constant_slices(image, labels, np.geomspace(1e-5, 0.3, 12)),
    }
