"""SWC files: the neuron-morphology format of SNT, Vaa3D and napari-tracing.

One node per line, ``id type x y z radius parent`` (``#`` starts a comment; ``parent`` -1 marks a
root). medloop writes one tree per trace, rooted at its seed, type 2 (axon), x = column, y = row,
z = 0, in the image's physical units when it has a spacing (``x = col * spacing_x``) and in pixels
otherwise, with SNT's header lines (``# All positions and radii in ...``, ``# Voxel separation
(x,y,z): ...``) so a reader can go back to pixels. Coordinates are written as the shortest text
that reads back to the same float (like SNT), or with ``decimals`` places. Per-trace facts (seed,
steps, stop reason, mean entropy) go into ``# medloop-tree K key=value ...`` comments.

Reading returns every unbranched piece as an (N, 2) float (row, col) pixel array: a tree without
branches is one path; at a branch point each further child starts a new path beginning at the
branch point (SNT's paths). A malformed file raises :class:`SwcError` naming the file and line.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medloop.app.errors import MedloopError

AXON = 2  # SWC structure type
UNIT_NAMES = {"px": "pixels", "pixel": "pixels", "um": "micrometers", "µm": "micrometers", "μm": "micrometers",
              "micron": "micrometers", "mm": "millimeters", "nm": "nanometers"}
_UNITS_LINE = re.compile(r"^#\s*All positions and radii in\s+(\S+)", re.IGNORECASE)
_SEPARATION_LINE = re.compile(r"^#\s*Voxel separation \(x,\s*y,\s*z\):\s*(.+)$", re.IGNORECASE)
_TREE_LINE = re.compile(r"^#\s*medloop-tree\s+(\d+)\s*(.*)$")


class SwcError(MedloopError):
    """An SWC file cannot be read or written (malformed line, unknown parent, cycle, bad values)."""


@dataclass
class SwcData:
    """What an SWC file holds: unbranched paths in pixels (row, col), their metadata, the units."""

    paths: list[np.ndarray]
    meta: list[dict[str, str]]  # per path: the tree's medloop-tree facts + "tree" (1-based) and "branch"
    unit: str = "pixels"
    spacing: tuple[float, float] = (1.0, 1.0)  # (x, y) physical size of a pixel, as used to read
    header_spacing: tuple[float, float] | None = None  # the file's "Voxel separation" line, if any
    comments: list[str] = field(default_factory=list)


def _number(value: float, decimals: int | None) -> str:
    value = float(value)
    return repr(value) if decimals is None else f"{value:.{decimals}f}"


def _meta_text(meta: Mapping[str, Any]) -> str:
    parts = []
    for key, value in meta.items():
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        key_text, value_text = re.sub(r"[\s=]+", "_", str(key)), re.sub(r"\s+", "_", text)  # one token each
        parts.append(f"{key_text}={value_text}")
    return " ".join(parts)


def format_swc(
    paths: Sequence[Any],
    spacing: Sequence[float] | None = None,
    unit: str | None = None,
    meta: Sequence[Mapping[str, Any]] | None = None,
    decimals: int | None = None,
    radius_px: float = 1.0,
) -> str:
    """The SWC text of ``paths`` ((N, 2) (row, col) px each; one tree each, rooted at vertex 0).
    ``spacing`` (x, y) and ``unit`` (e.g. "um") write physical coordinates; without them, pixels."""
    sx, sy = (float(spacing[0]), float(spacing[1])) if spacing is not None else (1.0, 1.0)
    if not (math.isfinite(sx) and math.isfinite(sy) and sx > 0 and sy > 0):
        raise SwcError(f"pixel spacing must be positive, got {tuple(spacing or ())}; give the image's (x, y) spacing")
    units = UNIT_NAMES.get(str(unit), str(unit)) if spacing is not None and unit else ("pixels" if spacing is None else "units")
    lines = ["# medloop axon traces (SWC: id type x y z radius parent); x = column, y = row, z = 0",
             f"# All positions and radii in {units}", f"# Voxel separation (x,y,z): {sx!r}, {sy!r}, 1.0", "#"]
    radius = _number(radius_px * (sx + sy) / 2.0, decimals)
    body: list[str] = []
    node = 0
    for k, path in enumerate(paths):
        arr = np.asarray(path, dtype=np.float64).reshape(-1, 2)
        if len(arr) == 0 or not np.all(np.isfinite(arr)):
            raise SwcError(f"trace {k} is empty or has non-finite vertices; nothing to write for it")
        if meta is not None and k < len(meta) and meta[k]:
            lines.append(f"# medloop-tree {k + 1} {_meta_text(meta[k])}")
        for i, (row, col) in enumerate(arr):
            node += 1
            parent = -1 if i == 0 else node - 1
            body.append(f"{node} {AXON} {_number(col * sx, decimals)} {_number(row * sy, decimals)} 0.0 {radius} {parent}")
    return "\n".join(lines + body) + "\n"


def write_swc(
    path: str | os.PathLike[str],
    paths: Sequence[Any],
    spacing: Sequence[float] | None = None,
    unit: str | None = None,
    meta: Sequence[Mapping[str, Any]] | None = None,
    decimals: int | None = None,
) -> Path:
    """Write ``paths`` as an SWC file atomically (see :func:`format_swc`); returns the path."""
    from medloop.app.io.atomic import atomic_write_text

    text = format_swc(paths, spacing, unit, meta, decimals)
    try:
        return atomic_write_text(path, text, suffix=".swc.tmp")
    except OSError as exc:
        raise SwcError(f"cannot write {path}: {exc.strerror or exc}; check the folder exists and is writable") from None


@dataclass
class _Node:
    line: int
    x: float
    y: float
    parent: int


def _parse_node(fields: list[str], name: str, line: int) -> tuple[int, _Node]:
    if len(fields) != 7:
        raise SwcError(f"{name} line {line}: expected 7 fields (id type x y z radius parent), got {len(fields)}; fix or remove the line")
    try:
        ident, parent = int(fields[0]), int(fields[6])
        int(fields[1])
    except ValueError:
        raise SwcError(f"{name} line {line}: id, type and parent must be whole numbers, got {fields[0]!r}, {fields[1]!r}, "
                       f"{fields[6]!r}; fix the line") from None
    try:
        x, y, z, r = (float(v) for v in fields[2:6])
    except ValueError:
        raise SwcError(f"{name} line {line}: x, y, z and radius must be numbers, got {' '.join(fields[2:6])!r}; fix the line") from None
    if not all(math.isfinite(v) for v in (x, y, z, r)):
        raise SwcError(f"{name} line {line}: non-finite coordinate or radius ({' '.join(fields[2:6])}); fix the line")
    return ident, _Node(line, x, y, -1 if parent < 0 else parent)


def _header(line: str, state: dict[str, Any], name: str, number: int) -> None:
    """Units, voxel separation and medloop-tree facts from a comment line."""
    if m := _UNITS_LINE.match(line):
        state["unit"] = m.group(1).rstrip(".").lower()
    elif m := _SEPARATION_LINE.match(line):
        try:
            sep = [float(v) for v in re.split(r"[,\s]+", m.group(1).strip()) if v]
        except ValueError:
            raise SwcError(f"{name} line {number}: voxel separation {m.group(1)!r} is not three numbers; fix the line") from None
        if len(sep) < 2 or not all(math.isfinite(v) and v > 0 for v in sep[:2]):
            raise SwcError(f"{name} line {number}: voxel separation {m.group(1)!r} needs positive x and y; fix the line")
        state["separation"] = (sep[0], sep[1])
    elif m := _TREE_LINE.match(line):
        state["trees"][int(m.group(1))] = dict(p.split("=", 1) for p in m.group(2).split() if "=" in p)


def _paths_of(nodes: dict[int, _Node], name: str) -> list[tuple[list[int], int, int]]:
    """Unbranched pieces as (node ids, tree number, branch number), roots in file order."""
    children: dict[int, list[int]] = {i: [] for i in nodes}
    for ident, node in nodes.items():
        if node.parent != -1:
            if node.parent not in nodes:
                raise SwcError(f"{name} line {node.line}: parent {node.parent} of node {ident} is not a node of the file; fix the line")
            children[node.parent].append(ident)
    roots = [i for i, n in nodes.items() if n.parent == -1]
    pieces, seen = [], 0
    for tree, root in enumerate(roots, start=1):
        stack, branch = [[root]], 0
        while stack:
            piece = stack.pop()
            while children[piece[-1]]:
                first, *others = children[piece[-1]]
                stack.extend([piece[-1], o] for o in reversed(others))
                piece.append(first)
            pieces.append((piece, tree, branch))
            seen += len(piece) - (1 if branch else 0)
            branch += 1
    if seen != len(nodes):
        line = min(n.line for n in nodes.values())
        raise SwcError(f"{name}: {len(nodes) - seen} node(s) are not connected to a root (parent -1), e.g. a cycle "
                       f"(first node on line {line}); fix the parents")
    return pieces


def parse_swc(text: str, name: str = "SWC", spacing: Sequence[float] | None = None) -> SwcData:
    """Parse SWC ``text`` (``name`` labels messages); coordinates divided by ``spacing`` (x, y), by
    the file's voxel separation when not given, else taken as pixels."""
    nodes: dict[int, _Node] = {}
    state: dict[str, Any] = {"unit": "pixels", "separation": None, "trees": {}}
    comments = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            comments.append(line)
            _header(line, state, name, number)
            continue
        ident, node = _parse_node(line.split(), name, number)
        if ident in nodes:
            raise SwcError(f"{name} line {number}: node id {ident} is used twice (also line {nodes[ident].line}); renumber the nodes")
        nodes[ident] = node
    if not nodes:
        raise SwcError(f"{name} has no nodes; give an SWC file with at least one 'id type x y z radius parent' line")
    sx, sy = tuple(float(v) for v in spacing[:2]) if spacing is not None else (state["separation"] or (1.0, 1.0))
    if not (sx > 0 and sy > 0 and math.isfinite(sx) and math.isfinite(sy)):
        raise SwcError(f"pixel spacing must be positive, got {(sx, sy)}; give the image's (x, y) spacing")
    paths, meta = [], []
    for piece, tree, branch in _paths_of(nodes, name):
        paths.append(np.array([[nodes[i].y / sy, nodes[i].x / sx] for i in piece], dtype=np.float64))
        meta.append({**state["trees"].get(tree, {}), "tree": str(tree), "branch": str(branch)})
    return SwcData(paths, meta, state["unit"], (sx, sy), state["separation"], comments)


def read_swc(path: str | os.PathLike[str], spacing: Sequence[float] | None = None) -> SwcData:
    """Read an SWC file (see :func:`parse_swc`); a missing or unreadable file is an :class:`SwcError`."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise SwcError(f"cannot read {path}: {exc.strerror or exc}; check the path") from None
    return parse_swc(text, str(path), spacing)
