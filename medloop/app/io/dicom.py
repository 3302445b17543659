"""Read DICOM series (a folder of slices) and single DICOM files into :class:`MedImage`.

Series are found and sorted by GDCM (through SimpleITK), so spacing, origin and direction come
from ImagePositionPatient, ImageOrientationPatient and PixelSpacing exactly as ITK computes them.
Before trusting that geometry the slice positions are checked: ITK spreads the slices evenly
between the first and the last, which silently mis-places every slice after a missing one.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medloop.app.errors import ImageReadError, MedloopWarning
from medloop.app.io.image import MedImage

_TAG = re.compile(r"^[0-9a-fA-F]{4}\|[0-9a-fA-F]{4}$")
_REL_TOL = 1e-3  # slice gaps equal within this fraction count as regular


@dataclass(frozen=True)
class DicomSeries:
    """One series of a folder, as GDCM groups and sorts it."""

    uid: str  # SeriesInstanceUID
    description: str  # SeriesDescription ('' if absent)
    modality: str  # 0008|0060 ('' if absent)
    files: tuple[str, ...]  # sorted by GDCM

    @property
    def label(self) -> str:
        return self.description or self.uid


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a file with the DICOM magic 'DICM' at byte 128."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def list_dicom_series(folder: Path) -> list[DicomSeries]:
    """The DICOM series in ``folder`` (not its subfolders), in GDCM's order.

    Raises:
        ImageReadError: the folder is missing, holds no DICOM series, or its only DICOM files
            are unreadable (the message names the first of them).
    """
    import SimpleITK as sitk

    folder = Path(folder)
    if not folder.exists():
        raise ImageReadError(f"cannot read {folder}: no such file or folder; check the path")
    if not folder.is_dir():
        raise ImageReadError(
            f"cannot read {folder}: not a folder; point to the folder that holds the .dcm files"
        )
    with _quiet_itk():
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        series = []
        for uid in uids:
            files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
            header = _read_header(Path(files[0]))
            series.append(
                DicomSeries(
                    uid=uid,
                    description=_tag(header, "0008|103e"),
                    modality=_tag(header, "0008|0060"),
                    files=files,
                )
            )
    # GDCM drops files it cannot parse without a word; say so, since they are often lost slices.
    listed = {Path(f).resolve() for s in series for f in s.files}
    skipped = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name.upper() != "DICOMDIR" and p.resolve() not in listed and is_dicom_file(p)
    )
    if not series:
        if skipped:
            _read_header(skipped[0])  # raises, naming the file and what is wrong with it
        raise ImageReadError(
            f"cannot read {folder}: no DICOM series found in this folder; "
            "point to the folder that holds the .dcm files"
        )
    if skipped:
        warnings.warn(
            f"{folder}: skipped {len(skipped)} DICOM file(s) that hold no readable image: "
            + ", ".join(p.name for p in skipped),
            MedloopWarning,
            stacklevel=2,
        )
    return series


def read_dicom_series(folder: Path, series: str | None = None, allow_irregular: bool = False) -> MedImage:
    """Read one series of ``folder`` as a volume with its exact patient geometry.

    ``series`` picks it by SeriesInstanceUID, SeriesDescription or 1-based number; it may be
    left out when the folder holds a single series. Irregularly spaced slices (a missing slice,
    say) are an error unless ``allow_irregular``, which resamples them onto a regular grid at the
    median spacing by linear interpolation along the slice normal.

    Raises:
        ImageReadError: no series, an ambiguous or unknown ``series``, unreadable files,
            duplicate or irregular slice positions.
    """
    folder = Path(folder)
    return _read_series(folder, _choose(folder, list_dicom_series(folder), series), allow_irregular)


def read_all_dicom_series(folder: Path, allow_irregular: bool = False) -> list[MedImage]:
    """Every series of ``folder``, one :class:`MedImage` each, in :func:`list_dicom_series` order."""
    folder = Path(folder)
    return [_read_series(folder, s, allow_irregular) for s in list_dicom_series(folder)]


def read_dicom_file(path: Path) -> MedImage:
    """Read a single DICOM file; a one-frame image becomes 2-D, a multi-frame one stays 3-D.

    A one-frame axial image keeps the in-plane part of its geometry: PixelSpacing, the first
    two ImagePositionPatient values and the top-left 2x2 of the direction. A slice that is not
    axial has no such 2-D frame, so it stays a one-slice 3-D image whose origin and direction
    are its ImagePositionPatient and ImageOrientationPatient. The full 3-D tags stay in the
    metadata either way. A whole-slide image (VL Whole Slide Microscopy) is read as a slide.

    Raises:
        ImageReadError: not DICOM, no image in it, a NumberOfFrames that disagrees with the
            pixel data, or pixels that cannot be decoded exactly.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"cannot read {path}: no such file or folder; check the path")
    facts = dicom_facts(path)
    if facts is not None:
        if facts.sop_class == WSI_SOP_CLASS:
            return _read_wsi(path)
        _refuse_unreadable(path, facts)
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    reader.LoadPrivateTagsOff()
    from medloop.app.io.quiet import quiet_decoders

    try:
        with quiet_decoders() as chatter:
            img = reader.Execute()
    except RuntimeError as exc:
        raise _corrupt(path, exc) from None
    tags = {k: reader.GetMetaData(k).strip() for k in reader.GetMetaDataKeys() if _TAG.match(k)}
    meta = _series_metadata(tags)
    if chatter.lines:  # kept, not printed: the decoder's own words, for whoever needs them
        meta["decoder_messages"] = chatter.lines
    for name, tag in (("ImagePositionPatient", "0020|0032"), ("ImageOrientationPatient", "0020|0037")):
        if tags.get(tag):
            meta[name] = _floats(tags[tag])
    array = sitk.GetArrayFromImage(img)
    if facts is not None:
        array = _exact_pixels(path, facts, array)
    channels = img.GetNumberOfComponentsPerPixel() > 1
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    in_plane = direction[:2, :2]
    axial = np.allclose(in_plane.T @ in_plane, np.eye(2), atol=1e-6)
    if img.GetSize()[2] > 1 or not axial:
        return MedImage(
            array if img.GetSize()[2] > 1 else array[:1], img.GetSpacing(), img.GetOrigin(), direction,
            channel_axis=channels, modality=meta["Modality"], metadata=meta, path=str(path),
        )
    return MedImage(
        array=array[0],
        spacing=img.GetSpacing()[:2],
        origin=img.GetOrigin()[:2],
        direction=in_plane,
        channel_axis=channels,
        modality=meta["Modality"],
        metadata=meta,
        path=str(path),
    )


WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
_RLE = "1.2.840.10008.1.2.5"
_ENCAPSULATED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class DicomFacts:
    """What pydicom says about a file before any pixel is decoded."""

    sop_class: str
    sop_name: str
    has_pixels: bool
    syntax: str
    bits_allocated: int
    samples: int
    rows: int
    columns: int
    frames_text: str | None  # NumberOfFrames as written (None if absent)
    pixel_bytes: int | None  # native PixelData length; None when encapsulated or absent
    encapsulated: tuple[int | None, int] | None = None  # (frames if known, most frames possible)


def dicom_facts(path: Path) -> DicomFacts | None:
    """The header facts of one DICOM file, or None when pydicom cannot parse it (GDCM then
    gets to explain what is wrong)."""
    import pydicom

    magic = is_dicom_file(path)
    try:
        with warnings.catch_warnings():  # pydicom's remarks on odd values: the checks below decide
            warnings.simplefilter("ignore")
            # Without the DICM magic pydicom must force its way in. Either way only a data set
            # with a proper SOP class UID is trusted: random bytes after "DICM" parse too.
            ds = pydicom.dcmread(str(path), defer_size=1024, force=not magic)
        meta = getattr(ds, "file_meta", None)
        sop = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta is not None else "") or "")
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)+", sop):  # garbage that parsed: not trusted
            return None
        pixel = None
        for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):  # (Float/DoubleFloat) PixelData
            pixel = pixel or ds.get_item(tag)
        length, encapsulated = None, None
        if pixel is not None:
            length = pixel.length if hasattr(pixel, "length") else len(pixel.value or b"")
            if length == _ENCAPSULATED_LENGTH or getattr(pixel, "is_undefined_length", False):
                length, encapsulated = None, _encapsulated_frames(ds)
        frames = ds.get_item(0x00280008)
        if frames is not None:
            raw = frames.value
            frames_text = (raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)).strip(" \0")
        else:
            frames_text = None
        return DicomFacts(
            sop_class=sop,
            sop_name=pydicom.uid.UID(sop).name or sop,
            has_pixels=pixel is not None,
            syntax=str(meta.get("TransferSyntaxUID", "")) if meta is not None else "",
            bits_allocated=int(ds.get("BitsAllocated", 0) or 0),
            samples=int(ds.get("SamplesPerPixel", 1) or 1),
            rows=int(ds.get("Rows", 0) or 0),
            columns=int(ds.get("Columns", 0) or 0),
            frames_text=frames_text,
            pixel_bytes=length,
            encapsulated=encapsulated,
        )
    except Exception:  # noqa: BLE001 - any parse failure: leave the verdict to GDCM
        return None


def _encapsulated_frames(ds) -> tuple[int | None, int] | None:
    """(frames, most frames possible) of compressed pixel data: the Basic Offset Table counts
    the frames when present; otherwise every frame takes at least one fragment."""
    from io import BytesIO

    from pydicom.encaps import parse_basic_offsets, parse_fragments

    try:
        buffer = BytesIO(ds.PixelData)
        offsets = parse_basic_offsets(buffer)
        fragments = parse_fragments(buffer)[0]
    except Exception:  # noqa: BLE001 - unparseable: GDCM decides
        return None
    if offsets:
        return len(offsets), len(offsets)
    return (1 if fragments == 1 else None), fragments


def _refuse_unreadable(path: Path, f: DicomFacts) -> None:
    """Refuse objects without an image and multi-frame files whose frame count is wrong."""
    if not f.has_pixels:
        raise ImageReadError(
            f"cannot read {path}: this DICOM file contains no image ({f.sop_name}); "
            "open a DICOM image file or series instead"
        )
    bits = f.rows * f.columns * f.samples * f.bits_allocated
    if f.pixel_bytes is not None and bits > 0:
        held: int | None = f.pixel_bytes * 8 // bits
        most = held
    elif f.encapsulated is not None:
        held, most = f.encapsulated
    else:
        return
    declared = f.frames_text
    if declared is None:
        if most <= 1 or held is None:
            return
        said = "missing"
    elif declared.isdigit() and int(declared) >= 1:
        if (held is None and int(declared) <= most) or int(declared) == held:
            return
        said = f"{int(declared)}"
    else:
        said = f"malformed ({declared!r})"
    holds = f"{held} frame(s)" if held is not None else f"at most {most} frame(s)"
    raise ImageReadError(
        f"cannot read {path}: NumberOfFrames is {said} but the pixel data holds {holds}; "
        "correct NumberOfFrames (e.g. with dcmodify) or re-export the file"
    )


def _exact_pixels(path: Path, f: DicomFacts, array: np.ndarray) -> np.ndarray:
    """Pixels as the standard defines them where GDCM's decode differs from it."""
    if f.bits_allocated == 1:
        # 1-bit data (DICOM SEG, binary masks) is 0/1; GDCM expands set bits to 255.
        return (array != 0).astype(np.uint8)
    if f.syntax == _RLE and f.samples > 1 and f.bits_allocated > 8:
        # GDCM mixes up the byte segments of multi-byte RLE colour.
        return _pydicom_pixels(path, array, f"RLE colour with {f.bits_allocated}-bit samples")
    if f.syntax == _BIG_ENDIAN and f.bits_allocated >= 32:
        # GDCM swaps 32-bit big-endian samples as two 16-bit halves.
        return _pydicom_pixels(path, array, f"big-endian {f.bits_allocated}-bit pixel data")
    return array


_BIG_ENDIAN = "1.2.840.10008.1.2.2"


def _pydicom_pixels(path: Path, array: np.ndarray, what: str) -> np.ndarray:
    """pydicom's decode (with the modality LUT GDCM applies) in GDCM's shape and type, or a
    one-line refusal when it cannot be had exactly."""
    def refuse(reason: str) -> ImageReadError:
        return ImageReadError(f"cannot read {path}: {what} cannot be decoded exactly ({reason}); re-export it uncompressed little-endian")

    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path))
            ref = np.asarray(ds.pixel_array)
            if int(ds.get("SamplesPerPixel", 1) or 1) == 1 and ("RescaleSlope" in ds or "RescaleIntercept" in ds):
                ref = np.asarray(apply_modality_lut(ref, ds))
    except Exception as exc:  # noqa: BLE001 - any decoder failure is refused in one line
        text = str(exc).strip()
        raise refuse(text.splitlines()[0][:160] if text else type(exc).__name__) from None
    if ref.size != array.size:
        raise refuse("decoders disagree on its size")
    out = ref.reshape(array.shape).astype(array.dtype, copy=False)
    if not np.array_equal(out, ref.reshape(array.shape)):
        raise refuse(f"its values do not fit {array.dtype}")
    return out


def _read_wsi(path: Path) -> MedImage:
    """A DICOM whole-slide image through OpenSlide (which reads the series around this file)."""
    from medloop.app.io.slide import read_dicom_slide

    return read_dicom_slide(path)


def _choose(folder: Path, all_series: list[DicomSeries], series: str | int | None) -> DicomSeries:
    choices = "; ".join(
        f"{i}: {s.description or '(no description)'} ({s.uid}, {len(s.files)} files)"
        for i, s in enumerate(all_series, 1)
    )
    if series is None:
        if len(all_series) == 1:
            return all_series[0]
        raise ImageReadError(
            f"cannot read {folder}: it holds {len(all_series)} DICOM series: {choices}; "
            "choose one with --series (its number, description or SeriesInstanceUID)"
        )
    key = str(series).strip()
    for match in ([s for s in all_series if s.uid == key], [s for s in all_series if s.description == key]):
        if len(match) == 1:
            return match[0]
        if len(match) > 1:
            raise ImageReadError(
                f"cannot read {folder}: {len(match)} series are described as {key!r}: {choices}; "
                "choose one with --series by its number or SeriesInstanceUID"
            )
    if key.isdigit() and 1 <= int(key) <= len(all_series):
        return all_series[int(key) - 1]
    raise ImageReadError(
        f"cannot read {folder}: no series {key!r}; the series are: {choices}; "
        "choose one with --series (its number, description or SeriesInstanceUID)"
    )


def _read_series(folder: Path, s: DicomSeries, allow_irregular: bool) -> MedImage:
    import SimpleITK as sitk

    if len(s.files) == 1:
        return _with_series(read_dicom_file(Path(s.files[0])), folder, s)
    first = dicom_facts(Path(s.files[0]))
    if first is not None and first.sop_class == WSI_SOP_CLASS:  # one slide, one file per level
        return _with_series(_read_wsi(Path(s.files[0])), folder, s)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(s.files))
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    try:
        with _quiet_itk():
            img = reader.Execute()
    except RuntimeError as exc:
        for f in s.files:  # the series reader's error does not name the culprit: find it
            _read_header(Path(f), pixels=True)
        raise _corrupt(folder, exc) from None
    meta: dict[str, Any] = {
        k: reader.GetMetaData(0, k).strip() for k in reader.GetMetaDataKeys(0) if _TAG.match(k)
    }
    array = sitk.GetArrayFromImage(img)
    spacing, origin = img.GetSpacing(), img.GetOrigin()
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    stack = _slice_stack(reader, len(s.files), folder, s)
    if stack is not None and not _check_spacing(folder, stack[1], allow_irregular):
        axes, positions, ipps = stack
        order = np.argsort(positions, kind="stable")
        array, meta["interpolated_slices"] = _resample(array[order], positions[order])
        spacing = (spacing[0], spacing[1], float(np.median(np.diff(positions[order]))))
        origin, direction = ipps[order[0]], axes
    channels = img.GetNumberOfComponentsPerPixel() > 1
    image = MedImage(array, spacing, origin, direction, channel_axis=channels, metadata=meta)
    return _with_series(image, folder, s)


def _slice_stack(reader, n: int, folder: Path, s: DicomSeries):
    """(axes, positions along the normal, positions) of the slices; None without geometry tags.

    ``axes`` has the row, column and slice-normal directions as columns, the normal pointing
    the way GDCM sorted the slices.
    """

    def tag(i: int, key: str) -> str:
        return reader.GetMetaData(i, key).strip() if reader.HasMetaDataKey(i, key) else ""

    ipps = [tag(i, "0020|0032") for i in range(n)]
    iops = [tag(i, "0020|0037") for i in range(n)]
    if not (all(ipps) and all(iops)):
        return None  # e.g. secondary captures: nothing to check against
    iop = np.array([_floats(v) for v in iops])
    if np.abs(iop - iop[0]).max() > 1e-4:
        raise ImageReadError(
            f"cannot read {folder}: the slices of series {s.label!r} have different orientations "
            "(ImageOrientationPatient), so they do not form one volume; open its files one at a time"
        )
    row, col = iop[0, :3], iop[0, 3:]
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    points = [_floats(v) for v in ipps]
    positions = np.array([np.dot(p, normal) for p in points])
    if np.median(np.diff(positions)) < 0:  # GDCM sorted against the normal
        normal, positions = -normal, -positions
    return np.column_stack([row, col, normal]), positions, points


def _check_spacing(folder: Path, positions: np.ndarray, allow_irregular: bool) -> bool:
    """True when the slices are evenly spaced; warns about missing slices, raises unless allowed."""
    # Sorted, because GDCM falls back to file-name order when two slices share a position.
    ordered = np.sort(positions)
    sorted_gaps = np.diff(ordered)
    for k in np.flatnonzero(sorted_gaps <= _REL_TOL * float(np.median(sorted_gaps))):
        raise ImageReadError(
            f"cannot read {folder}: two slices share position {_mm(ordered[k])} mm; remove duplicates"
        )
    gaps = np.diff(positions)
    typical = float(np.median(gaps))
    if np.all(np.abs(gaps - typical) <= _REL_TOL * typical):
        return True
    missing = []  # (slices missing, position before, position after)
    for k, gap in enumerate(gaps):
        ratio = gap / typical
        if round(ratio) >= 2 and abs(ratio - round(ratio)) <= 0.1:
            missing.append((round(ratio) - 1, positions[k], positions[k + 1]))
    if missing:
        where = "; ".join(f"{n} between {_mm(a)} mm and {_mm(b)} mm" for n, a, b in missing)
        warnings.warn(
            f"{folder}: {sum(m[0] for m in missing)} slice(s) missing ({where} along the slice "
            f"normal, where slices are otherwise {_mm(typical)} mm apart)",
            MedloopWarning,
            stacklevel=4,
        )
    if not allow_irregular:
        raise ImageReadError(
            f"cannot read {folder}: the slice spacing is irregular (gaps from {_mm(gaps.min())} mm "
            f"to {_mm(gaps.max())} mm), so the slices would be mis-placed in a regular volume; "
            "pass --allow-irregular to resample them onto a regular grid"
        )
    return False


def _resample(array: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, int]:
    """Linear interpolation along axis 0 onto a grid at the median gap; returns (array, #new slices)."""
    step = float(np.median(np.diff(positions)))
    count = int(round((positions[-1] - positions[0]) / step)) + 1
    grid = np.clip(positions[0] + step * np.arange(count), positions[0], positions[-1])
    below = np.clip(np.searchsorted(positions, grid, side="right") - 1, 0, len(positions) - 2)
    weight = (grid - positions[below]) / (positions[below + 1] - positions[below])
    # Snap grid points that land on a slice so its voxels are copied, not re-computed.
    weight[np.abs(weight) < 1e-6] = 0.0
    weight[np.abs(weight - 1) < 1e-6] = 1.0
    shape = (-1,) + (1,) * (array.ndim - 1)
    out = (1 - weight).reshape(shape) * array[below] + weight.reshape(shape) * array[below + 1]
    if np.issubdtype(array.dtype, np.integer):
        out = np.rint(out)
    new = int(np.sum(np.min(np.abs(grid[:, None] - positions[None, :]), axis=1) > _REL_TOL * step))
    return out.astype(array.dtype), new


def _with_series(image: MedImage, folder: Path, s: DicomSeries) -> MedImage:
    meta = {
        **image.metadata,
        "SeriesDescription": s.description,
        "SeriesInstanceUID": s.uid,
        "Modality": s.modality,
        "name": s.label,
    }
    return replace(image, modality=s.modality, metadata=meta, path=str(folder))


def _series_metadata(tags: dict[str, str]) -> dict[str, Any]:
    desc, uid = _tag(tags, "0008|103e"), _tag(tags, "0020|000e")
    return {
        **tags,
        "SeriesDescription": desc,
        "SeriesInstanceUID": uid,
        "Modality": _tag(tags, "0008|0060"),
        "name": desc or uid,
    }


def _read_header(path: Path, pixels: bool = False) -> dict[str, str]:
    """The DICOM tags of one file (stripped); a file GDCM cannot read raises ImageReadError."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    reader.LoadPrivateTagsOff()
    try:
        with _quiet_itk():
            if pixels:
                reader.Execute()
            else:
                reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _corrupt(path, exc) from None
    return {k: reader.GetMetaData(k).strip() for k in reader.GetMetaDataKeys() if _TAG.match(k)}


def _corrupt(path: Path, exc: RuntimeError) -> ImageReadError:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    # ITK's last line reads "ITK ERROR: GDCMImageIO(0x...): <reason>"; keep only the reason.
    reason = lines[-1].rsplit("): ", 1)[-1] if lines else "unreadable"
    return ImageReadError(
        f"cannot read {path}: not a valid DICOM file ({reason}); "
        "check that the file is complete and not corrupt, or remove it"
    )


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    # ITK and GDCM print their own warnings to stderr ("No Series were found", "Non uniform
    # sampling", JPEG decoder messages); the errors and warnings raised here say the same with
    # the path and what to do.
    from medloop.app.io.quiet import quiet_decoders

    with quiet_decoders():
        yield


def _tag(tags: dict[str, str], key: str) -> str:
    return tags.get(key, "").strip()


def _floats(value: str) -> tuple[float, ...]:
    return tuple(float(v) for v in value.strip().split("\\"))


def _mm(value: float) -> str:
    return f"{value:.6g}"
