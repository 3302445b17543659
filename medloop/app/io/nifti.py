"""What ITK's NIfTI reader does not do: NIfTI-2 files, sheared (non-orthonormal) sforms, and
NaN voxels (ITK reads them back as 0).

NIfTI-2 is rewritten as NIfTI-1 in a temporary file (ITK stays the one interpreter of NIfTI
geometry); a sheared sform is replaced by its nearest orthonormal frame, with a warning that
says by how much the voxel positions move; NaN voxels are put back from the file's own bytes.
"""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np

_GZIP = b"\x1f\x8b"


def _open(path: Path):
    with open(path, "rb") as f:
        compressed = f.read(2) == _GZIP
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def header_bytes(path: Path) -> bytes:
    with _open(path) as f:
        return f.read(544)


def _order(header: bytes) -> tuple[str, int] | None:
    """(struct byte order, header size 348 or 540), or None if not NIfTI."""
    for order in "<>":
        if len(header) >= 4:
            size = struct.unpack(order + "i", header[:4])[0]
            if size in (348, 540):
                return order, size
    return None


def is_nifti2(path: Path) -> bool:
    found = _order(header_bytes(path))
    return found is not None and found[1] == 540


def nifti2_as_nifti1(path: Path, target: Path) -> None:
    """Write the NIfTI-2 ``path`` as an uncompressed NIfTI-1 file at ``target`` (same voxels,
    same geometry; header numbers narrowed to NIfTI-1's int16 and float32 fields).

    Raises:
        ValueError: a dimension above 32767 (NIfTI-1 cannot hold it).
    """
    raw = header_bytes(path)
    o, _ = _order(raw)  # type: ignore[misc]
    u = lambda fmt, at: struct.unpack_from(o + fmt, raw, at)  # noqa: E731
    dims = u("8q", 16)
    if max(dims) > 32767:
        raise ValueError(f"a dimension of {max(dims)} does not fit NIfTI-1")
    h = bytearray(348)
    p = lambda fmt, at, *v: struct.pack_into(o + fmt, h, at, *v)  # noqa: E731
    p("i", 0, 348)
    p("8h", 40, *dims)
    p("3f", 56, *u("3d", 80))  # intent_p1..3
    p("h", 68, u("i", 504)[0])  # intent_code
    p("h", 70, u("h", 12)[0])  # datatype
    p("h", 72, u("h", 14)[0])  # bitpix
    p("h", 74, u("q", 224)[0])  # slice_start
    p("8f", 76, *u("8d", 104))  # pixdim
    p("f", 108, 352.0)  # vox_offset
    p("2f", 112, *u("2d", 176))  # scl_slope, scl_inter
    p("h", 120, u("q", 232)[0])  # slice_end
    h[122] = u("i", 496)[0] & 0xFF  # slice_code
    h[123] = u("i", 500)[0] & 0xFF  # xyzt_units
    p("4f", 124, *u("4d", 192))  # cal_max, cal_min, slice_duration, toffset
    h[148:228] = raw[240:320]  # descrip
    h[228:252] = raw[320:344]  # aux_file
    p("2h", 252, u("i", 344)[0], u("i", 348)[0])  # qform_code, sform_code
    p("6f", 256, *u("6d", 352))  # quatern_b..d, qoffset_x..z
    p("12f", 280, *u("12d", 400))  # srow_x, srow_y, srow_z
    h[328:344] = raw[508:524]  # intent_name
    h[39] = raw[524]  # dim_info
    h[344:348] = b"n+1\0"
    offset = u("q", 168)[0]
    with _open(path) as src, open(target, "wb") as dst:
        dst.write(bytes(h) + b"\0" * 4)
        src.read(offset)
        shutil.copyfileobj(src, dst, 1 << 22)


def sform(path: Path) -> np.ndarray | None:
    """The 3x4 sform (RAS) of a NIfTI-1 file whose sform_code > 0, else None."""
    raw = header_bytes(path)
    found = _order(raw)
    if found is None or found[1] != 348 or struct.unpack_from(found[0] + "h", raw, 254)[0] <= 0:
        return None
    return np.array(struct.unpack_from(found[0] + "12f", raw, 280), dtype=float).reshape(3, 4)


def without_orientation(path: Path, target: Path) -> None:
    """Copy the NIfTI-1 ``path`` (uncompressed) to ``target`` with qform_code = sform_code = 0."""
    with _open(path) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
    with open(target, "r+b") as f:
        order = _order(f.read(4))[0]  # type: ignore[index]
        f.seek(252)
        f.write(struct.pack(order + "2h", 0, 0))


def orthonormal_frame(srow: np.ndarray, shape_xyz: tuple[int, ...]) -> tuple[tuple, tuple, tuple, float]:
    """(spacing, origin, direction, largest shift in mm) of the orthonormal frame nearest a
    sheared sform, in ITK's LPS convention. Spacing is the length of each sform column; the
    direction is the polar factor of the normalised columns; the shift is measured at the corners."""
    m, t = srow[:, :3], srow[:, 3]
    spacing = np.linalg.norm(m, axis=0)
    u, _, vt = np.linalg.svd(m / spacing)
    rotation = u @ vt
    lps = np.diag([-1.0, -1.0, 1.0])
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape_xyz], indexing="ij")).reshape(3, -1)
    shift = float(np.max(np.linalg.norm(m @ corners - (rotation * spacing) @ corners, axis=0)))
    return tuple(spacing), tuple(lps @ t), tuple((lps @ rotation).ravel()), shift


def nan_mask(path: Path, count: int) -> np.ndarray | None:
    """Where a float NIfTI-1/2 file stores NaN, in file (= ITK array) order; None when the file
    is not float, holds no NaN, or its voxel count is not ``count``."""
    raw = header_bytes(path)
    found = _order(raw)
    if found is None:
        return None
    o, size = found
    if size == 348:
        datatype, offset = struct.unpack_from(o + "h", raw, 70)[0], int(struct.unpack_from(o + "f", raw, 108)[0])
    else:
        datatype, offset = struct.unpack_from(o + "h", raw, 12)[0], struct.unpack_from(o + "q", raw, 168)[0]
    dtype = {16: "f4", 64: "f8"}.get(datatype)
    if dtype is None:
        return None
    with _open(path) as f:
        f.read(max(offset, size + 4))
        data = np.frombuffer(f.read(), dtype=o + dtype)
    if data.size < count:
        return None
    mask = np.isnan(data[:count])
    return mask if mask.any() else None
