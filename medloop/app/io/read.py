"""Read any supported image into a :class:`MedImage`; failures become ``ImageReadError``."""

from __future__ import annotations

import os
from pathlib import Path

from medloop.app.errors import ImageReadError
from medloop.app.io.image import MedImage

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def suffix_of(path: Path) -> str:
    """Lower-case suffix, treating ``.nii.gz`` as one suffix."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def read_image(path: str | os.PathLike) -> MedImage:
    """Read ``path`` with its full geometry.

    Raises:
        ImageReadError: the path is missing, empty, of an unknown kind, or not readable; the
            message names the file and what to do.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"cannot read {p}: no such file or folder; check the path")
    if p.is_file() and p.stat().st_size == 0:
        raise ImageReadError(f"cannot read {p}: the file is empty; re-export or copy it again")
    suffix = suffix_of(p)
    if suffix not in VOLUME_SUFFIXES:
        raise ImageReadError(
            f"cannot read {p}: unsupported file type {suffix or '(no extension)'!r}; "
            f"supported: {', '.join(VOLUME_SUFFIXES)}"
        )
    return _read_with_sitk(p)


def _read_with_sitk(p: Path) -> MedImage:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise ImageReadError(
            f"cannot read {p}: not a valid {suffix_of(p)} image ({reason.strip()}); "
            "check that the file is complete and not corrupt"
        ) from None
    return from_sitk_checked(img, p)


def from_sitk_checked(img, p: Path) -> MedImage:
    from medloop.app.io.sitk_convert import from_sitk

    if img.GetDimension() not in (2, 3):
        raise ImageReadError(
            f"cannot read {p}: {img.GetDimension()}-D images are not supported; "
            "split it into 2-D or 3-D images first"
        )
    return from_sitk(img, path=str(p))
