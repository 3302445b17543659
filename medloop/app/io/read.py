"""Read any supported image into a :class:`MedImage`; every failure is an ``ImageReadError``.

The file's content is checked against its extension first, so a renamed, truncated or
non-image file gets a message that says exactly what is wrong and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medloop.app.errors import ImageReadError
from medloop.app.io.image import MedImage
from medloop.app.io.sniff import KIND_SUFFIX, gzip_is_truncated, nifti_all_nan, nifti_check, sniff

ITK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
# Extension -> the content it must hold.
SUFFIX_KIND = {
    ".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "metaimage",
    ".mhd": "metaimage", ".dcm": "dicom", ".dicom": "dicom", ".tif": "tiff", ".tiff": "tiff",
    ".ome.tif": "tiff", ".ome.tiff": "tiff", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg",
    ".bmp": "bmp", ".hdr": "nifti",
}
KIND_NAME = {
    "nifti": "NIfTI", "nrrd": "NRRD", "metaimage": "MetaImage", "dicom": "DICOM", "tiff": "TIFF",
    "png": "PNG", "jpeg": "JPEG", "bmp": "BMP", "gzip": "gzip",
}


def suffix_of(path: Path) -> str:
    """Lower-case suffix, treating ``.nii.gz`` and ``.ome.tif(f)`` as one suffix."""
    name = path.name.lower()
    for double in (".nii.gz", ".ome.tiff", ".ome.tif"):
        if name.endswith(double):
            return double
    return path.suffix.lower()


def supported_suffixes() -> tuple[str, ...]:
    from medloop.app.io.slide import SLIDE_SUFFIXES

    return tuple(SUFFIX_KIND) + tuple(SLIDE_SUFFIXES)


def read_image(path: str | os.PathLike, series: str | None = None, allow_irregular: bool = False) -> MedImage:
    """Read a file, or a DICOM series from a folder, with its full geometry.

    Args:
        path: an image file or a folder holding a DICOM series.
        series: for a folder with several DICOM series, which one (UID, description or 1-based index).
        allow_irregular: resample a DICOM series with missing slices onto a regular grid.

    Raises:
        ImageReadError: the message names the file, the problem and what to do.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"cannot read {p}: no such file or folder; check the path")
    if p.is_dir():
        from medloop.app.io.dicom import read_dicom_series

        return _checked(read_dicom_series(p, series=series, allow_irregular=allow_irregular), p)
    if p.stat().st_size == 0:
        raise ImageReadError(f"cannot read {p}: the file is empty; re-export or copy it again")
    suffix = suffix_of(p)
    if suffix in (".hdr", ".img"):
        p, suffix = _analyze_pair(p, suffix)
    from medloop.app.io.slide import SLIDE_SUFFIXES

    if suffix in SLIDE_SUFFIXES:
        from medloop.app.io.slide import read_slide

        return read_slide(p)
    kind = sniff(p)
    expected = SUFFIX_KIND.get(suffix)
    if expected is None:
        if kind == "dicom":  # DICOM files often have no extension at all
            expected = kind
        else:
            hint = f" (the content looks like {KIND_NAME[kind]}: rename it to {KIND_SUFFIX[kind]})" if kind else ""
            raise ImageReadError(
                f"cannot read {p}: unsupported file type {suffix or '(no extension)'!r}{hint}; "
                f"supported: {', '.join(supported_suffixes())}"
            )
    if kind != expected:
        raise ImageReadError(_content_mismatch(p, suffix, expected, kind))
    return _checked(_read_kind(p, kind), p)


def _analyze_pair(p: Path, suffix: str) -> tuple[Path, str]:
    """An Analyze/NIfTI pair is read through its .hdr, which needs the .img beside it."""
    other = ".img" if suffix == ".hdr" else ".hdr"
    beside = [p.with_suffix(s) for s in (other, other.upper())]
    found = next((b for b in beside if b.is_file()), None)
    if suffix == ".hdr" and found is None:
        raise ImageReadError(
            f"cannot read {p}: the .img beside it is missing (an Analyze/NIfTI pair needs both "
            f"{p.stem}.hdr and {p.stem}.img); copy the .img file too"
        )
    if suffix == ".img" and found is not None:
        return found, ".hdr"
    return p, suffix


TRUNCATED_GZIP = "the gzip stream is truncated (incomplete copy or download); copy the file again"


def _content_mismatch(p: Path, suffix: str, expected: str, kind: str | None) -> str:
    name = KIND_NAME[expected]
    if kind == "gzip":
        if gzip_is_truncated(p):
            return f"cannot read {p}: {TRUNCATED_GZIP}"
        return f"cannot read {p}: the compressed content is not {name}; check that this is the right file"
    if kind is None:
        return (
            f"cannot read {p}: not a {name} file (unrecognised or corrupt header); "
            "check that this is an image and that it is not damaged"
        )
    return (
        f"cannot read {p}: the content is {KIND_NAME[kind]} but the extension says {suffix}; "
        f"rename it to {KIND_SUFFIX[kind]}"
    )


def _read_kind(p: Path, kind: str) -> MedImage:
    # A .hdr holds no voxels (they are in the .img), so its size says nothing.
    problem = nifti_check(p) if kind == "nifti" and suffix_of(p) != ".hdr" else None
    if problem == "truncated" and suffix_of(p).endswith(".gz"):
        raise ImageReadError(f"cannot read {p}: {TRUNCATED_GZIP}")
    if problem == "truncated":
        raise ImageReadError(f"cannot read {p}: the file is shorter than its header says (truncated); copy the file again")
    if problem:
        raise ImageReadError(f"cannot read {p}: {problem}; check that the file is complete and not damaged")
    if kind in ("nifti", "nrrd", "metaimage"):
        return _read_with_sitk(p, KIND_NAME[kind])
    if kind == "dicom":
        from medloop.app.io.dicom import read_dicom_file

        return read_dicom_file(p)
    if kind == "tiff":
        from medloop.app.io.slide import is_slide, read_slide

        if is_slide(p):
            return read_slide(p)
        from medloop.app.io.planar import read_tiff

        return read_tiff(p)
    from medloop.app.io.planar import read_raster

    return read_raster(p)


def _read_with_sitk(p: Path, name: str) -> MedImage:
    import tempfile

    from medloop.app.io import nifti

    with tempfile.TemporaryDirectory(prefix="medloop-read-") as scratch:
        source = p
        if name == "NIfTI" and nifti.is_nifti2(p):  # ITK reads NIfTI-1 only
            source = Path(scratch) / "nifti1.nii"
            try:
                nifti.nifti2_as_nifti1(p, source)
            except ValueError as exc:
                raise ImageReadError(f"cannot read {p}: NIfTI-2 with {exc}; medloop cannot read it") from None
        img = _sitk_read(p, source, name, Path(scratch))
        if name == "NIfTI" and img.GetPixelID() in _FLOAT_PIXELS and img.GetNumberOfComponentsPerPixel() == 1:
            mask = nifti.nan_mask(source, int(np.prod(img.GetSize())))
        else:
            mask = None
    size = img.GetSize()
    # Trailing length-1 axes (a 4-D NIfTI holding one volume) carry no information.
    while img.GetDimension() > 3 and size[-1] == 1:
        img = img[(slice(None),) * (img.GetDimension() - 1) + (0,)]
        size = img.GetSize()
    if img.GetDimension() not in (2, 3):
        raise ImageReadError(
            f"cannot read {p}: unsupported dimensionality ({img.GetDimension()}-D, size "
            f"{' x '.join(map(str, size))}); medloop reads 2-D and 3-D images - split it first"
        )
    from medloop.app.io.sitk_convert import from_sitk

    image = from_sitk(img, path=str(p))
    if mask is not None:  # ITK reads NIfTI's NaN voxels as 0: put them back
        image.array.reshape(-1)[mask] = np.nan
    return image


_FLOAT_PIXELS = (8, 9)  # sitkFloat32, sitkFloat64


def _sitk_read(p: Path, source: Path, name: str, scratch: Path):
    """ITK's read of ``source`` (``p`` or its NIfTI-1 stand-in); a sheared NIfTI sform is
    replaced by its nearest orthonormal frame with a MedloopWarning."""
    import SimpleITK as sitk

    from medloop.app.io.quiet import quiet_decoders

    try:
        with quiet_decoders():
            img = sitk.ReadImage(str(source))
        if name == "NIfTI":
            _warn_if_sform_ignored(p, source, img)
        return img
    except RuntimeError as exc:
        if suffix_of(p).endswith(".gz") and gzip_is_truncated(p):
            raise ImageReadError(f"cannot read {p}: {TRUNCATED_GZIP}") from None
        if name == "NIfTI" and "orthonormal" in str(exc):
            return _orthonormalised(p, source, scratch)
        raise ImageReadError(
            f"cannot read {p}: corrupt {name} header or data ({_itk_reason(exc)}); "
            "check that the file is complete and not damaged"
        ) from None


def _warn_if_sform_ignored(p: Path, source: Path, img) -> None:
    """ITK quietly reads a NIfTI whose sform is sheared with its qform: say so, and how far apart
    the two place the voxels."""
    import warnings

    from medloop.app.errors import MedloopWarning
    from medloop.app.io import nifti

    srow = nifti.sform(source)
    if srow is None or img.GetDimension() < 3:
        return
    m = srow[:, :3]
    gram = m.T @ m
    if np.abs(gram - np.diag(np.diag(gram))).max() <= 1e-6 * np.abs(np.diag(gram)).max():
        return
    size = img.GetSize()[:3]
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in size], indexing="ij")).reshape(3, -1).T
    lps = np.diag([-1.0, -1.0, 1.0])
    by_sform = (lps @ (m @ corners.T + srow[:, 3:4])).T
    pad = [0.0] * (img.GetDimension() - 3)
    by_itk = np.array([img.TransformContinuousIndexToPhysicalPoint([float(c) for c in k] + pad) for k in corners])[:, :3]
    shift = float(np.max(np.linalg.norm(by_sform - by_itk, axis=1)))
    if shift <= 1e-3 * min(img.GetSpacing()[:3]):  # ITK found the sform close enough and used it
        return
    warnings.warn(
        f"{p}: its sform is sheared (not orthonormal), so it was read with its qform instead; "
        f"the sform would place voxels up to {shift:.3g} mm elsewhere",
        MedloopWarning,
        stacklevel=6,
    )


def _orthonormalised(p: Path, source: Path, scratch: Path):
    import warnings

    import SimpleITK as sitk

    from medloop.app.errors import MedloopWarning
    from medloop.app.io import nifti
    from medloop.app.io.quiet import quiet_decoders

    srow = nifti.sform(source)
    if srow is None:
        raise ImageReadError(
            f"cannot read {p}: its orientation (qform) is not orthonormal, which medloop does not "
            "support; resample the image onto an orthonormal grid in the tool that made it"
        )
    plain = scratch / "plain.nii"
    nifti.without_orientation(source, plain)
    with quiet_decoders():
        img = sitk.ReadImage(str(plain))
    spacing, origin, direction, shift = nifti.orthonormal_frame(srow, img.GetSize()[:3])
    if img.GetDimension() != 3:
        raise ImageReadError(f"cannot read {p}: a sheared (non-orthonormal) sform on a {img.GetDimension()}-D image is not supported")
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    warnings.warn(
        f"{p}: its sform is sheared (not orthonormal); read with the nearest orthonormal direction "
        f"and the sform's column lengths as spacing, which moves voxels by up to {shift:.3g} mm",
        MedloopWarning,
        stacklevel=5,
    )
    return img


def _itk_reason(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if "itk::ERROR" in line or "Description" in line:
            return line.split(":", 2)[-1].strip()[:160]
    return (lines[-1] if lines else "unreadable")[:160]


def _checked(image: MedImage, p: Path) -> MedImage:
    """Refuse images whose voxels hold no numbers at all (nothing to review or segment)."""
    array = image.array
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f" or not array.size:
        return image
    all_nan = np.isnan(array).all()
    if not all_nan and not array.any() and sniff(p) == "nifti":
        all_nan = nifti_all_nan(p)  # ITK turns NaN into 0 when it reads NIfTI
    if all_nan:
        raise ImageReadError(
            f"cannot read {p}: all voxels are NaN (no image data); re-export the image from its source"
        )
    return image
