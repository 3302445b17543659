"""TIFF/OME-TIFF and PNG/JPEG readers (microscopy, photos, exported X-rays)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from medloop.app.errors import ImageReadError
from medloop.app.io.image import MedImage

TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

# Micrometres per unit, for TIFF ResolutionUnit and the units OME/ImageJ write.
_UM_PER_UNIT = {
    "m": 1e6, "cm": 1e4, "mm": 1e3, "\u00b5m": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0,
    "\\u00B5m": 1.0, "nm": 1e-3, "inch": 25400.0, "in": 25400.0,
}


def read_tiff(path: Path) -> MedImage:
    """A TIFF/OME-TIFF as (z, y, x[, c]) with its physical pixel size in um when known."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = series.asarray()
            axes = series.axes
            geometry = _tiff_geometry(tif, axes)
    except (tifffile.TiffFileError, ValueError, OSError, EOFError) as exc:
        raise ImageReadError(f"cannot read {path}: not a valid TIFF ({exc}); check that the file is complete") from None
    data, axes = _canonical_axes(data, axes, path)
    spatial = axes.replace("C", "")
    n = len(spatial)
    spacing_zyx = [geometry.get("spacing_zyx", {}).get(a, None) for a in spatial]
    known = all(s is not None for s in spacing_zyx)
    if "medloop" in geometry:
        g = geometry["medloop"]
        return MedImage(
            array=data, spacing=g["spacing"], origin=g["origin"], direction=np.asarray(g["direction"]),
            channel_axis="C" in axes, unit=g.get("unit", "um"), modality=g.get("modality", ""),
            metadata={"tiff_axes": axes}, path=str(path),
        )
    return MedImage(
        array=data,
        spacing=tuple(s for s in spacing_zyx[::-1]) if known else (1.0,) * n,
        origin=(0.0,) * n,
        direction=np.eye(n),
        channel_axis="C" in axes,
        unit="um" if known else "px",
        metadata={"tiff_axes": axes, "spacing_known": known},
        path=str(path),
    )


def _canonical_axes(data: np.ndarray, axes: str, path: Path) -> tuple[np.ndarray, str]:
    """Reorder tifffile axes to (Z, Y, X[, C]); drop length-1 axes; refuse other dimensions."""
    axes = axes.replace("S", "C") if "C" not in axes else axes
    keep = []
    for i, a in enumerate(axes):
        if data.shape[i] == 1 and a not in "YX":
            continue
        keep.append(i)
    data = data.reshape([data.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    extra = [a for a in axes if a not in "ZYXC"]
    if extra:
        if len(extra) == 1 and "Z" not in axes:
            axes = axes.replace(extra[0], "Z")  # an unnamed image stack is a z-stack
        else:
            dims = ", ".join(f"{a}={data.shape[axes.index(a)]}" for a in axes)
            raise ImageReadError(
                f"cannot read {path}: unsupported dimensionality ({dims}); medloop reads 2-D and "
                "3-D images with optional channels - split the time points or positions first"
            )
    order = [axes.index(a) for a in "ZYXC" if a in axes]
    return np.transpose(data, order), "".join(axes[i] for i in order)


def _tiff_geometry(tif, axes: str) -> dict[str, Any]:
    """Pixel size per axis in um from (in order of trust) medloop's own JSON, OME, ImageJ, tags."""
    if tif.is_shaped and tif.shaped_metadata and "direction" in tif.shaped_metadata[0]:
        return {"medloop": tif.shaped_metadata[0]}
    spacing: dict[str, float] = {}
    if tif.is_ome and tif.ome_metadata:
        pixels = re.search(r"<Pixels\b[^>]*>", tif.ome_metadata)
        if pixels:
            attrs = dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(0)))
            for a in "XYZ":
                if f"PhysicalSize{a}" in attrs:
                    unit = attrs.get(f"PhysicalSize{a}Unit", "um")
                    spacing[a] = float(attrs[f"PhysicalSize{a}"]) * _UM_PER_UNIT.get(unit, 1.0)
        return {"spacing_zyx": spacing}
    page = tif.pages[0]
    tags = page.tags
    unit_um = None
    if tif.is_imagej and tif.imagej_metadata:
        unit_um = _UM_PER_UNIT.get(str(tif.imagej_metadata.get("unit", "")).lower())
        if "spacing" in tif.imagej_metadata and unit_um:
            spacing["Z"] = float(tif.imagej_metadata["spacing"]) * unit_um
    res_unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 1
    if unit_um is None:
        unit_um = {2: 25400.0, 3: 1e4}.get(res_unit)
    if unit_um is not None:
        for a, tag in (("X", "XResolution"), ("Y", "YResolution")):
            if tag in tags:
                num, den = tags[tag].value
                if num > 0:
                    spacing[a] = unit_um * den / num
    return {"spacing_zyx": spacing}


def read_raster(path: Path) -> MedImage:
    """A PNG/JPEG/BMP as a 2-D image (RGB as channels); pixel spacing is unknown (1 px)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "LA", "PA", "CMYK", "YCbCr"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            data = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageReadError(f"cannot read {path}: not a valid image ({exc}); check that the file is complete") from None
    return MedImage(
        array=data,
        spacing=(1.0, 1.0),
        origin=(0.0, 0.0),
        direction=np.eye(2),
        channel_axis=data.ndim == 3,
        unit="px",
        metadata={"spacing_known": False},
        path=str(path),
    )


def write_tiff(image: MedImage, tmp_path: str) -> None:
    """Write a TIFF that keeps the full geometry (JSON description) and sets resolution tags."""
    import tifffile

    data = np.asarray(image.array)
    axes = "ZYX"[3 - image.ndim :] + ("C" if image.channel_axis else "")
    meta = {
        "axes": axes.replace("C", "S") if image.channel_axis and data.shape[-1] in (3, 4) else axes,
        "spacing": list(image.spacing),
        "origin": list(image.origin),
        "direction": image.direction.tolist(),
        "unit": image.unit,
        "modality": image.modality,
    }
    kwargs: dict[str, Any] = {}
    if image.unit in ("um", "mm"):
        um = 1000.0 if image.unit == "mm" else 1.0
        # ResolutionUnit centimetre: pixels per cm, so other readers get the pixel size too.
        kwargs = {"resolution": (1e4 / (image.spacing[0] * um), 1e4 / (image.spacing[1] * um)), "resolutionunit": 3}
    photometric = "rgb" if image.channel_axis and data.shape[-1] in (3, 4) else "minisblack"
    planar = None if photometric == "rgb" or not image.channel_axis else "contig"
    tifffile.imwrite(
        tmp_path, data, metadata=meta, photometric=photometric, planarconfig=planar,
        compression="zlib", **kwargs,
    )
