"""Seed points as napari's Points layer writes them to CSV: ``index,axis-0,axis-1`` = (row, column).

napari's CSV writer puts a header ``index,axis-0,...,axis-{n-1}`` and one row per point (data
coordinates, i.e. pixels for a layer over an unscaled image). A 2-D trace needs exactly two axes.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medloop.plugins.axons.checks import TracingInputError

HEADER = ("index", "axis-0", "axis-1")


class PointsFileError(TracingInputError):
    """A seeds / end-points CSV file is missing or not in napari's Points CSV format."""


def _axes(header: list[str], name: str) -> tuple[int, int]:
    names = [h.strip().lower() for h in header]
    axes = [n for n in names if n.startswith("axis-")]
    if "axis-0" not in names or "axis-1" not in names:
        raise PointsFileError(
            f"{name}: first line must be napari's Points CSV header 'index,axis-0,axis-1' (row, column), got "
            f"{','.join(header)!r}; save the seeds layer with File > Save Selected Layers as .csv")
    if len(axes) != 2:
        raise PointsFileError(
            f"{name} has {len(axes)} coordinates per point ({', '.join(axes)}); tracing needs 2-D points (axis-0 = row, "
            "axis-1 = column): put the seeds on the 2-D image or its maximum projection")
    return names.index("axis-0"), names.index("axis-1")


def parse_points_csv(text: str, name: str = "points") -> np.ndarray:
    """(N, 2) float (row, col) points of napari Points CSV ``text`` (N may be 0)."""
    rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    if not rows:
        raise PointsFileError(f"{name} is empty; it needs napari's header 'index,axis-0,axis-1' and one line per point")
    r0, c0 = _axes(rows[0], name)
    points = []
    for line, row in enumerate(rows[1:], start=2):
        try:
            points.append((float(row[r0]), float(row[c0])))
        except (ValueError, IndexError):
            raise PointsFileError(f"{name} line {line}: {','.join(row)!r} has no numeric axis-0 (row) and axis-1 (column); fix the line") from None
    return np.array(points, dtype=np.float64).reshape(-1, 2)


def read_points_csv(path: str | os.PathLike[str]) -> np.ndarray:
    """(N, 2) float (row, col) points of a napari Points CSV file."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PointsFileError(f"cannot read {path}: {exc.strerror or exc}; check the path") from None
    return parse_points_csv(text, str(path))


def points_csv_text(points: Sequence[Any]) -> str:
    """napari Points CSV text of (N, 2) (row, col) points."""
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return ",".join(HEADER) + "\n" + "".join(f"{i},{float(r)!r},{float(c)!r}\n" for i, (r, c) in enumerate(arr))


def write_points_csv(path: str | os.PathLike[str], points: Sequence[Any]) -> Path:
    """Write (N, 2) (row, col) points as napari Points CSV, atomically."""
    from medloop.app.io.atomic import atomic_write_text

    return atomic_write_text(path, points_csv_text(points), suffix=".csv.tmp")
