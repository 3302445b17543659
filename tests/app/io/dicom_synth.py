"""Synthetic DICOM series for the tests, written slice by slice with SimpleITK (no downloads).

Follows SimpleITK's "Dicom Series From Array" example: every slice is a one-slice 3-D image
(so an oblique direction survives) carrying the geometry and series tags.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.spatial.transform import Rotation


def synthetic_volume(
    shape_zyx: tuple[int, int, int] = (12, 20, 24),
    spacing: tuple[float, float, float] = (0.8, 0.6, 2.5),
    origin: tuple[float, float, float] = (-101.25, 37.5, -12.75),
    euler_xyz_deg: tuple[float, float, float] = (12.0, -8.0, 25.0),
    seed: int = 0,
) -> sitk.Image:
    """A smooth int16 volume (so slices can be interpolated) plus seeded noise, oblique geometry."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in shape_zyx), indexing="ij")
    smooth = 400 * np.sin(z / 6.0) + 300 * np.cos(y / 4.0) + 5 * x
    array = (smooth + rng.integers(-2, 3, size=shape_zyx)).astype(np.int16)
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(tuple(Rotation.from_euler("xyz", euler_xyz_deg, degrees=True).as_matrix().ravel()))
    return img


def _ds(values) -> str:
    # DS values may hold 16 characters; 10 decimals keep positions well inside 1e-6 mm.
    return "\\".join(f"{v:.10g}" for v in values)


def write_series(
    img: sitk.Image,
    folder: Path,
    uid: str = "1.2.826.0.1.3680043.2.1125.1",
    description: str = "synthetic CT",
    modality: str = "CT",
    skip: tuple[int, ...] = (),
    prefix: str = "slice",
) -> list[Path]:
    """Write ``img`` as one DICOM file per slice into ``folder``, leaving out slice indices ``skip``."""
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    iop = _ds(list(direction[:, 0]) + list(direction[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # keep our SeriesInstanceUID instead of a fresh one
    paths = []
    for k in range(img.GetSize()[2]):
        if k in skip:
            continue
        piece = img[:, :, k : k + 1]
        tags = {
            "0008|0008": "DERIVED\\SECONDARY",
            "0008|0060": modality,
            "0008|103e": description,
            "0020|000d": uid + ".0",  # StudyInstanceUID
            "0020|000e": uid,
            "0020|0013": str(k + 1),
            "0020|0032": _ds(img.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": iop,
            "0028|0030": _ds(img.GetSpacing()[1::-1]),  # PixelSpacing is row, column spacing
            "0018|0050": _ds(img.GetSpacing()[2:]),
        }
        for tag, value in tags.items():
            piece.SetMetaData(tag, value)
        path = folder / f"{prefix}{k:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(piece)
        paths.append(path)
    return paths
