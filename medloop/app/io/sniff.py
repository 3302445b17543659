"""What a file really is, from its first bytes, so a wrong extension gets a precise message."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

# Content kind -> the extension a user should give it.
KIND_SUFFIX = {
    "nifti": ".nii", "nrrd": ".nrrd", "metaimage": ".mha", "dicom": ".dcm", "png": ".png",
    "jpeg": ".jpg", "tiff": ".tif", "bmp": ".bmp", "gzip": ".gz",
}


def sniff(path: Path, head: bytes | None = None) -> str | None:
    """The content kind of ``path`` ('nifti', 'png', ...), looking inside gzip; None if unknown."""
    if head is None:
        with open(path, "rb") as f:
            head = f.read(1024)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as f:
                inner = f.read(1024)
        except (OSError, EOFError, zlib.error):
            return "gzip"
        return sniff(path, inner) if inner[:2] != b"\x1f\x8b" else "gzip"
    # DICOM first: its 128-byte preamble is free-form, so it may read as a NIfTI header size.
    if head[128:132] == b"DICM":
        return "dicom"
    if len(head) >= 348 and int.from_bytes(head[:4], "little") in (348, 540) or head[344:347] in (b"n+1", b"ni1"):
        return "nifti"
    if len(head) >= 4 and int.from_bytes(head[:4], "big") in (348, 540):
        return "nifti"
    if head[:4] == b"NRRD":
        return "nrrd"
    if head.lstrip()[:10] in (b"ObjectType", b"NDims = 2\n", b"NDims = 3\n") or b"ElementDataFile" in head:
        return "metaimage"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:2] == b"BM":
        return "bmp"
    if _preambleless_dicom(head):
        return "dicom"
    return None


def _preambleless_dicom(head: bytes) -> bool:
    """A DICOM data set written without preamble and 'DICM' (older tools): it starts with a
    group 0002 or 0008 element, little-endian, in explicit VR (two capital letters) or
    implicit VR (a 4-byte length)."""
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00") or head[3] != 0:
        return False
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    return int.from_bytes(head[4:8], "little") < 1024 and head[2] < 0x20


def gzip_is_truncated(path: Path) -> bool:
    """True when a gzip stream ends early (an interrupted copy or download)."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 22):
                pass
    except EOFError:
        return True
    except (OSError, zlib.error):
        return False
    return False


def nifti_layout(header: bytes) -> tuple[int, str | None]:
    """(bytes the file must hold, problem) from a NIfTI-1/2 header; (0, None) if not NIfTI.

    The size is vox_offset plus the voxel data; the problem names a corrupt header field.
    """
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset, minimum = int(struct.unpack(order + "f", header[108:112])[0]), 352
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            dims = struct.unpack(order + "8q", header[16:80])
            offset, minimum = struct.unpack(order + "q", header[168:176])[0], 544
            break
    else:
        return 0, None
    if not 1 <= dims[0] <= 7:
        return 0, f"dim[0] = {dims[0]}, must be 1 to 7"
    if any(d < 1 for d in dims[1 : dims[0] + 1]):
        return 0, f"dimensions {list(dims[1 : dims[0] + 1])} include a size below 1"
    if bitpix <= 0 or bitpix % 8 and bitpix != 1:
        return 0, f"bitpix = {bitpix}"
    voxels = 1
    for d in dims[1 : dims[0] + 1]:
        voxels *= d
    return max(offset, minimum) + voxels * bitpix // 8, None


def nifti_check(path: Path) -> str | None:
    """What is wrong with a NIfTI file (plain or gzip) before ITK reads it, or None.

    ITK fills a short voxel stream with zeros without complaint, and its C library prints
    header errors to stderr, so size and header are checked here. For gzip the trailer's ISIZE
    field (uncompressed size mod 2**32) answers without decompressing.
    """
    with open(path, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            expected, problem = nifti_layout(f.read(544))
    except (OSError, EOFError, zlib.error):
        return "truncated" if compressed and gzip_is_truncated(path) else None
    if problem:
        return f"corrupt header: {problem}"
    if not expected:
        return None
    if not compressed:
        return "truncated" if path.stat().st_size < expected else None
    with open(path, "rb") as f:
        f.seek(-4, 2)
        isize = struct.unpack("<I", f.read(4))[0]
    # A multi-member gzip could disagree for a healthy file; decompressing settles it.
    return "truncated" if isize != expected % 2**32 and gzip_is_truncated(path) else None


def nifti_all_nan(path: Path) -> bool:
    """True when a float NIfTI's stored voxels are all NaN (ITK reads NaN back as 0)."""
    import numpy as np

    with open(path, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
    with (gzip.open if compressed else open)(path, "rb") as f:
        raw = f.read()
    order = "<" if struct.unpack("<i", raw[:4])[0] in (348, 540) else ">"
    if struct.unpack(order + "i", raw[:4])[0] == 348:
        datatype, offset = struct.unpack(order + "h", raw[70:72])[0], int(struct.unpack(order + "f", raw[108:112])[0])
    else:
        datatype, offset = struct.unpack(order + "h", raw[12:14])[0], struct.unpack(order + "q", raw[168:176])[0]
    dtype = {16: "f4", 64: "f8"}.get(datatype)
    if dtype is None:
        return False
    data = np.frombuffer(raw, dtype=order + dtype, offset=max(offset, 352))
    return bool(data.size) and bool(np.isnan(data).all())
