"""The prompt log: one row per prompt or edit (undo, redo, reset, commit), kept as CSV.

Rows hold physical millimetres, never voxels, so a log replays on a resampled or reoriented
copy of the image (:func:`medloop.plugins.interactive.session.replay`). The file is written
atomically beside the autosaved labels on every interaction: it is the session's crash
recovery, its ``replay`` input and its reproducibility record.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, fields
from pathlib import Path

from medloop.app.errors import MedloopError
from medloop.app.io.image import MedImage
from medloop.plugins.interactive.prompts import Box, Point, Prompt, Scribble

PROMPTS_SUFFIX = ".prompts.csv"
# "skip": a click the panel coalesced away (a later one replaced it before it ran); replay ignores it.
EVENTS = ("prompt", "confirm", "undo", "redo", "reset", "commit", "skip")


class PromptLogError(MedloopError):
    """A prompt log that cannot be read or replayed."""


@dataclass(frozen=True)
class LogRow:
    """One interaction. ``x, y, z`` (and ``x2, y2, z2`` for a box's far corner) are mm;
    a scribble is one row per point sharing ``seq``; ``z`` is empty on 2-D images."""

    seq: int
    event: str
    object: int
    kind: str = ""
    positive: int = 1
    x: float = math.nan
    y: float = math.nan
    z: float = math.nan
    x2: float = math.nan
    y2: float = math.nan
    z2: float = math.nan
    plane: int = -1
    label: int = 0
    engine: str = ""
    method: str = ""
    model_sha256: str = ""
    ms: float = 0.0
    changed: int = 0
    message: str = ""


COLUMNS = tuple(f.name for f in fields(LogRow))


def _xyz(values: tuple[float, ...]) -> tuple[float, float, float]:
    v = [float(c) for c in values] + [math.nan] * (3 - len(values))
    return v[0], v[1], v[2]


def prompt_rows(prompt: Prompt, base: LogRow) -> list[LogRow]:
    """The log rows of one prompt (``base`` holds the shared fields: seq, object, engine, ...)."""
    from dataclasses import replace

    if isinstance(prompt, Point):
        x, y, z = _xyz(prompt.xyz_mm)
        return [replace(base, kind="point", positive=int(prompt.positive), x=x, y=y, z=z)]
    if isinstance(prompt, Box):
        (x, y, z), (x2, y2, z2) = _xyz(prompt.corners_mm[0]), _xyz(prompt.corners_mm[1])
        plane = -1 if prompt.plane is None else int(prompt.plane)
        return [replace(base, kind="box", positive=1, x=x, y=y, z=z, x2=x2, y2=y2, z2=z2, plane=plane)]
    rows = []
    for p in prompt.points_mm:
        x, y, z = _xyz(p)
        rows.append(replace(base, kind="scribble", positive=int(prompt.positive), x=x, y=y, z=z))
    return rows


def rows_to_prompt(rows: list[LogRow], ndim: int) -> Prompt:
    """Rebuild the prompt of the rows sharing one ``seq``."""
    first = rows[0]
    take = (lambda r: (r.x, r.y, r.z)[:ndim])
    if first.kind == "point":
        return Point(take(first), bool(first.positive))
    if first.kind == "box":
        far = (first.x2, first.y2, first.z2)[:ndim]
        return Box((take(first), far), None if first.plane < 0 else first.plane, bool(first.positive))
    if first.kind == "scribble":
        return Scribble(tuple(take(r) for r in rows), bool(first.positive))
    raise PromptLogError(f"prompt log row {first.seq}: unknown prompt kind {first.kind!r} (point, box or scribble)")


def format_rows(rows: list[LogRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow(["" if isinstance(v, float) and math.isnan(v) else (f"{v:.6g}" if isinstance(v, float) else v)
                         for v in (getattr(r, c) for c in COLUMNS)])
    return buffer.getvalue()


def write_log(path: str | Path, rows: list[LogRow]) -> Path:
    """Write the log atomically (a reader never sees half a file)."""
    from medloop.app.errors import ImageWriteError
    from medloop.app.io.atomic import atomic_target

    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_target(target, suffix=".csv") as tmp:
            Path(tmp).write_text(format_rows(rows), encoding="utf-8")
    except OSError as exc:
        raise ImageWriteError(f"cannot write the prompt log {target} ({exc.strerror})") from None
    return target


def _parse(record: dict[str, str], line: int, path: Path) -> LogRow:
    values: dict[str, object] = {}
    for f in fields(LogRow):
        raw = (record.get(f.name) or "").strip()
        try:
            if f.type in ("int",):
                values[f.name] = int(float(raw)) if raw else (1 if f.name == "positive" else (-1 if f.name == "plane" else 0))
            elif f.type in ("float",):
                values[f.name] = float(raw) if raw else math.nan if f.name != "ms" else 0.0
            else:
                values[f.name] = raw
        except ValueError:
            raise PromptLogError(f"{path}: line {line}: {f.name}={raw!r} is not a number; fix or remove the row") from None
    if values["event"] not in EVENTS:
        raise PromptLogError(f"{path}: line {line}: unknown event {values['event']!r} (one of {', '.join(EVENTS)})")
    return LogRow(**values)  # type: ignore[arg-type]


def read_log(path: str | Path) -> list[LogRow]:
    """Read a prompt log; :class:`PromptLogError` names the file and the bad line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PromptLogError(f"cannot read the prompt log {p}: {exc.strerror or exc}; check the path") from None
    except UnicodeDecodeError:
        raise PromptLogError(f"{p} is not a text prompt log (CSV written by medloop interactive)") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("seq", "event", "object", "kind", "x", "y") if c not in (reader.fieldnames or [])]
    if missing:
        raise PromptLogError(f"{p} is not a medloop prompt log: it lacks the column(s) {', '.join(missing)}")
    return [_parse(record, i + 2, p) for i, record in enumerate(reader)]


def log_path_beside(store_folder: str | Path, image: MedImage, layer: str) -> Path:
    """The prompt log of ``image``'s labels layer ``layer`` in an annotation folder (beside its labels)."""
    from medloop.app.io.autosave import AnnotationStore

    return AnnotationStore(store_folder).sidecar_path(image, layer, PROMPTS_SUFFIX)
