"""Atomic writers: data goes to a temporary file in the target folder, then is renamed.

NIfTI/NRRD/MHA go through SimpleITK and keep spacing, origin and direction exactly (in mm);
TIFF keeps the full geometry in its JSON description plus standard resolution tags.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from medloop.app.errors import ImageWriteError
from medloop.app.io.atomic import atomic_target
from medloop.app.io.image import MedImage
from medloop.app.io.read import suffix_of

ITK_WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
TIFF_WRITE_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")
WRITE_SUFFIXES = ITK_WRITE_SUFFIXES + TIFF_WRITE_SUFFIXES
# Label maps at least this many pixels on a side are written as tiled pyramids, tile by tile.
PYRAMID_MIN_SIDE = 16384


def write_image(image: MedImage, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``image`` with its geometry; the target appears complete or not at all.

    Raises:
        ImageWriteError: unsupported output type, missing folder, or a failed write.
    """
    p = Path(path)
    suffix = suffix_of(p)
    if suffix not in WRITE_SUFFIXES:
        raise ImageWriteError(
            f"cannot write {p}: unsupported output type {suffix or '(no extension)'!r}; "
            f"use one of {', '.join(WRITE_SUFFIXES)}"
        )
    if not p.parent.is_dir():
        raise ImageWriteError(f"cannot write {p}: folder {p.parent} does not exist; create it first")
    if suffix in TIFF_WRITE_SUFFIXES and _is_slide_sized_labels(image):
        from medloop.app.io.slide import write_label_pyramid

        um_per_unit = {"mm": 1000.0, "um": 1.0}.get(image.unit, 1.0)
        return write_label_pyramid(image.array, p, spacing_um=tuple(s * um_per_unit for s in image.spacing))
    if image.is_multiscale:
        if suffix in TIFF_WRITE_SUFFIXES:
            from medloop.app.io.slide import write_image_pyramid

            return write_image_pyramid(image, p)
        raise ImageWriteError(
            f"cannot write {p}: the image is a whole-slide pyramid ({image.shape}); write it to a "
            "tiled pyramidal .tif, or one level of it with --level K"
        )
    try:
        with atomic_target(p, suffix=suffix) as tmp:
            if suffix in ITK_WRITE_SUFFIXES:
                _write_itk(image, tmp, compress)
            else:
                from medloop.app.io.planar import write_tiff

                write_tiff(image, tmp)
    except (RuntimeError, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ImageWriteError(f"cannot write {p}: {reason}") from None
    return p


def _is_slide_sized_labels(image: MedImage) -> bool:
    return (
        image.ndim == 2
        and not image.channel_axis
        and np.dtype(image.dtype).kind in "iub"
        and max(image.shape) >= PYRAMID_MIN_SIDE
    )


def _write_itk(image: MedImage, tmp: str, compress: bool) -> None:
    import SimpleITK as sitk

    from medloop.app.io.sitk_convert import to_sitk

    if image.unit == "um":  # ITK formats are read as millimetres by every other tool
        image = replace(
            image,
            spacing=tuple(s / 1000 for s in image.spacing),
            origin=tuple(o / 1000 for o in image.origin),
            unit="mm",
        )
    if image.dtype == bool:
        image = image.with_array(np.asarray(image.array, dtype=np.uint8))
    sitk.WriteImage(to_sitk(image), tmp, useCompression=compress)
