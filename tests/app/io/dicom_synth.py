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


# --------------------------------------------------------------------------------------------
# Files written with pydicom: what GDCM-through-SimpleITK cannot write (1-bit data, a chosen
# preamble, a wrong NumberOfFrames, whole-slide images).

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


def _pydicom_dataset(sop_class: str, modality: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[sop_class, modality, "instance"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[sop_class, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[sop_class, "series"])
    ds.Modality = modality
    return ds


def write_pydicom_image(
    path: Path,
    frames: np.ndarray,
    bits: int = 16,
    preamble: bytes | None = None,
    number_of_frames: str | None = None,
    sop_class: str = "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
) -> Path:
    """An uncompressed grey DICOM of ``frames`` ((rows, cols) or (n, rows, cols)).

    ``bits`` = 1 packs the 0/1 values eight to a byte (as DICOM SEG does); ``number_of_frames``
    is written verbatim (even when it is wrong); ``preamble`` replaces the 128 zero bytes.
    """
    from pydicom.pixels import pack_bits

    frames = np.asarray(frames)
    ds = _pydicom_dataset(sop_class, "SEG" if bits == 1 else "OT")
    ds.Rows, ds.Columns = frames.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    ds.PixelSpacing = [0.5, 0.5]
    if number_of_frames is not None:
        ds.add_new(0x00280008, "IS", number_of_frames)
    elif frames.ndim == 3:
        ds.NumberOfFrames = frames.shape[0]
    if bits == 1:
        ds.PixelData = pack_bits(frames.astype(np.uint8))
    else:
        ds.PixelData = frames.astype(f"<u{bits // 8}").tobytes()
    if preamble is not None:
        ds.preamble = preamble.ljust(128, b"\0")
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom_wsi(
    folder: Path, size: tuple[int, int] = (1024, 768), tile: int = 256, mpp: float = 0.5, levels: int = 1, seed: int = 0
) -> np.ndarray:
    """A DICOM whole-slide image (VL Whole Slide Microscopy, TILED_FULL, uncompressed RGB) as
    OpenSlide 4 reads it: one file per level (level k is every 2**k-th pixel), one series, in
    ``folder``; returns the level-0 (height, width, 3) RGB image."""
    from pydicom.uid import generate_uid

    image = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    uids = {k: generate_uid(entropy_srcs=[k, str(seed)]) for k in ("study", "series", "frame")}
    for k in range(levels):
        ds = _wsi_level(image[:: 2**k, :: 2**k], tile, mpp * 2**k, uids, size, mpp)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["level", str(k), str(seed)])
        ds.save_as(folder / f"level{k}.dcm", enforce_file_format=True)
    return image


def _wsi_level(level: np.ndarray, tile: int, mpp: float, uids: dict, size0: tuple[int, int], mpp0: float):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    h, w = level.shape[:2]
    ny, nx = -(-h // tile), -(-w // tile)
    padded = np.zeros((ny * tile, nx * tile, 3), np.uint8)
    padded[:h, :w] = level
    frames = padded.reshape(ny, tile, nx, tile, 3).swapaxes(1, 2).reshape(-1, tile, tile, 3)
    ds = _pydicom_dataset(WSI_SOP_CLASS, "SM")
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uids["study"], uids["series"], uids["frame"]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = h, w
    ds.Rows = ds.Columns = tile
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = size0[1] * mpp0 / 1000, size0[0] * mpp0 / 1000
    ds.ImagedVolumeDepth = 0.001
    ds.TotalPixelMatrixFocalPlanes = ds.NumberOfOpticalPaths = 1
    path_item = Dataset()
    path_item.OpticalPathIdentifier = "1"
    ds.OpticalPathSequence = Sequence([path_item])
    measures = Dataset()
    measures.PixelSpacing = [mpp / 1000, mpp / 1000]  # mm
    measures.SliceThickness = 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.ContainerIdentifier = "slide-1"
    ds.PixelData = frames.tobytes()
    return ds
