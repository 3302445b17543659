"""Atomic writers: data goes to a temporary file in the target folder, then is renamed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from medloop.app.errors import ImageWriteError
from medloop.app.io.image import MedImage
from medloop.app.io.read import VOLUME_SUFFIXES, suffix_of


def write_image(image: MedImage, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``image`` with its geometry to NIfTI/NRRD/MHA; never leaves a partial file."""
    import SimpleITK as sitk

    from medloop.app.io.sitk_convert import to_sitk

    p = Path(path)
    suffix = suffix_of(p)
    if suffix not in VOLUME_SUFFIXES or suffix in (".mhd", ".nhdr"):
        raise ImageWriteError(
            f"cannot write {p}: unsupported output type {suffix or '(no extension)'!r}; "
            "use .nii.gz, .nii, .nrrd or .mha"
        )
    if not p.parent.is_dir():
        raise ImageWriteError(f"cannot write {p}: folder {p.parent} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix, dir=p.parent)
    os.close(fd)
    try:
        sitk.WriteImage(to_sitk(image), tmp, useCompression=compress)
        os.replace(tmp, p)
    except RuntimeError as exc:
        raise ImageWriteError(f"cannot write {p}: {str(exc).strip().splitlines()[-1]}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p
