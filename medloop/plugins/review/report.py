"""The review report: a CSV (one row per case) and one self-contained HTML page.

Why self-contained: the HTML is mailed, archived and opened on machines without medloop or
network, so the chart is inline SVG and the thumbnails are PNGs embedded as base64 (encoded here
with zlib: no plotting or imaging library needed).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medloop.plugins.review.project import (
    STATUSES,
    ProjectState,
    ReviewError,
    ReviewProject,
    utc_now,
)

CSV_COLUMNS = [
    "case", "status", "uncertainty", "reviewers", "last_reviewer", "last_action", "last_time",
    "edit_dice", "voxels_changed", "volume_change_ml", "seconds", "prompts", "prompt_seconds", "model", "model_version",
    "weights_sha256", "comment", "pins",
]
THUMB_SIZE = 160
STYLE = (
    "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;text-align:left}"
    ".warn{background:#fff3cd;padding:.5em;border:1px solid #e0c060}</style></head><body>"
)
PALETTE = np.array(
    [[230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66], [0, 114, 178], [213, 94, 0], [204, 121, 167]],
    dtype=np.float64,
)


@dataclass(frozen=True)
class ReportFiles:
    csv: Path
    html: Path


def report_rows(project: ReviewProject, state: ProjectState | None = None) -> list[dict[str, Any]]:
    """One dict per case (keys :data:`CSV_COLUMNS`), in review (uncertainty) order; the numbers
    are those of the case's latest verdict (None where not known)."""
    state = state or project.state()
    rows = []
    for case in project.cases_sorted("uncertainty"):
        st = state.cases[case.id]
        d = st.verdict()
        last = st.history[-1] if st.history else None
        metrics = (d.metrics if d is not None else None) or {}
        prompts = (d.prompts if d is not None else None) or {}  # click -> object prompts behind an edit
        model = (d.model if d is not None else None) or (case.predictions[0].model if case.predictions else {})
        rows.append({
            "case": case.id,
            "status": st.status,
            "uncertainty": case.uncertainty_score,
            "reviewers": "; ".join(sorted(st.reviews)),  # names may hold spaces
            "last_reviewer": last.reviewer if last else None,
            "last_action": last.action if last else None,
            "last_time": last.time if last else None,
            "edit_dice": metrics.get("dice"),
            "voxels_changed": metrics.get("voxels_changed"),
            "volume_change_ml": metrics.get("volume_change_ml"),
            "seconds": round(st.seconds, 3),
            "prompts": prompts.get("count"),
            "prompt_seconds": prompts.get("seconds"),
            "model": model.get("model"),
            "model_version": model.get("model_version"),
            "weights_sha256": model.get("weights_sha256"),
            "comment": " | ".join(h.comment for h in st.history if h.comment),
            "pins": " | ".join(pin_text(p) for h in st.history for p in h.pins),
        })
    return rows


def write_report(project: ReviewProject, out: str | os.PathLike | None = None, thumbnails: bool = True) -> ReportFiles:
    """Write ``report.csv`` and ``report.html`` into ``out`` (default ``DIR/report``).

    Raises:
        ReviewError: the output folder cannot be created or written.
    """
    from medloop.app.io.atomic import atomic_target

    from medloop.plugins.review.export import output_folder

    out = output_folder(out if out is not None else project.folder / "report", "report")
    state = project.state()
    rows = report_rows(project, state)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv_value(v) for k, v in r.items()})
    page = _html(project, state, rows, thumbnails)
    files = ReportFiles(out / "report.csv", out / "report.html")
    try:
        for path, text in ((files.csv, buf.getvalue()), (files.html, page)):
            with atomic_target(path, suffix=path.suffix) as tmp:
                Path(tmp).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ReviewError(f"cannot write the report into {out} ({exc.strerror}); choose a writable place") from None
    return files


def pin_text(pin: dict[str, Any]) -> str:
    """A pinned comment as one line: ``text @ (z, y, x) index`` (or ``world``, mm)."""
    pos = ", ".join(f"{float(v):g}" for v in pin.get("position", ()))
    text = str(pin.get("text") or "").strip() or "(no text)"
    return f"{text} @ ({pos}) {pin.get('frame', 'index')}"


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


# -- images --------------------------------------------------------------------------------------


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an (h, w, 3) uint8 array as PNG (zlib only)."""
    arr = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def thumbnail(image: np.ndarray, mask: np.ndarray | None, pixel_size: tuple[float, float] = (1.0, 1.0), size: int = THUMB_SIZE) -> np.ndarray:
    """An (h, w, 3) uint8 picture of one slice with the mask blended in colour, resized (nearest)
    so its longer physical side is ``size`` pixels. ``pixel_size`` is (row, column) spacing."""
    img = np.asarray(image, dtype=np.float64)
    finite = img[np.isfinite(img)]
    lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    grey = np.clip((np.nan_to_num(img) - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    rgb = np.repeat(grey[..., None] * 255.0, 3, axis=-1)
    if mask is not None:
        m = np.asarray(mask).astype(np.int64)
        fg = m > 0
        colours = PALETTE[(m[fg] - 1) % len(PALETTE)]
        rgb[fg] = 0.55 * rgb[fg] + 0.45 * colours
    ny, nx = img.shape
    ey, ex = ny * abs(pixel_size[0]), nx * abs(pixel_size[1])
    scale = size / max(ey, ex, 1e-9)
    oh, ow = max(1, round(ey * scale)), max(1, round(ex * scale))
    rows = np.minimum((np.arange(oh) + 0.5) * ny / oh, ny - 1).astype(int)
    cols = np.minimum((np.arange(ow) + 0.5) * nx / ow, nx - 1).astype(int)
    return rgb[rows][:, cols].round().astype(np.uint8)


def _case_thumbnail(project: ReviewProject, case_id: str, state: ProjectState) -> str:
    """A data: URI of the case's middle slice (middle of the mask's extent) with its mask."""
    image = project.load_image(case_id)
    try:
        mask, _ = project.reviewed_mask(case_id, state=state)
    except ReviewError:
        mask = None
    if mask is None and project.case(case_id).predictions:
        mask = np.asarray(project.load_prediction(case_id).array)
    arr = np.asarray(image.array)
    if image.ndim == 3:
        z = arr.shape[0] // 2
        if mask is not None and np.asarray(mask).any():
            zs = np.flatnonzero(np.asarray(mask).reshape(arr.shape[0], -1).any(axis=1))
            z = int(zs[len(zs) // 2])
        arr, mask = arr[z], (None if mask is None else np.asarray(mask)[z])
    rgb = thumbnail(arr, mask, (image.spacing[1], image.spacing[0]))
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")


# -- chart and page ------------------------------------------------------------------------------


def change_chart_svg(rows: list[dict[str, Any]], width: int = 640, height: int = 240) -> str:
    """Inline SVG bar chart of what the reviewers changed: voxels changed per case (an accepted
    case is a bar of height 0 labelled "0", a rejected one says "rejected", a case still to
    review has no bar). Each bar's label and tooltip also give the volume change in mL."""
    pad_l, pad_b, pad_t = 56, 70, 18
    n = max(len(rows), 1)
    plot_w, plot_h = width - pad_l - 10, height - pad_b - pad_t
    bar = plot_w / n
    top = max([float(r["voxels_changed"]) for r in rows if r.get("voxels_changed") is not None] + [1.0])
    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            'aria-label="Voxels changed per case">'
        ),
        f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - 10}" y2="{pad_t + plot_h}" stroke="#444"/>',
        f'<text x="12" y="{pad_t + plot_h / 2:.1f}" font-size="10" text-anchor="middle" '
        f'transform="rotate(-90 12 {pad_t + plot_h / 2:.1f})">voxels changed</text>',
    ]
    for tick in (0.0, 0.5, 1.0):
        y = pad_t + plot_h * (1 - tick)
        parts.append(f'<line x1="{pad_l - 4}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{pad_l - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{tick * top:g}</text>')
    for i, r in enumerate(rows):
        x = pad_l + i * bar
        label = html.escape(str(r["case"]))
        changed, ml, dice = r.get("voxels_changed"), r.get("volume_change_ml"), r.get("edit_dice")
        cx = x + bar / 2
        if changed is not None:
            h = plot_h * float(changed) / top
            tip = f"{label}: {int(changed)} voxels changed"
            if ml is not None:
                tip += f" ({float(ml):+.3f} mL)"
            if dice is not None:
                tip += f", edit Dice {float(dice):.3f}"
            parts.append(
                f'<rect class="changed" data-case="{label}" data-voxels="{int(changed)}" x="{x + bar * 0.15:.1f}" '
                f'y="{pad_t + plot_h - h:.1f}" width="{bar * 0.7:.1f}" height="{max(h, 0.0):.1f}" fill="#0072b2">'
                f"<title>{tip}</title></rect>"
            )
            value = f"{int(changed)}" + (f" ({float(ml):+.3f} mL)" if ml is not None and changed else "")
            parts.append(f'<text x="{cx:.1f}" y="{pad_t + plot_h - h - 3:.1f}" font-size="9" text-anchor="middle">{value}</text>')
        elif r.get("status") == "rejected":
            parts.append(f'<text x="{cx:.1f}" y="{pad_t + plot_h - 3:.1f}" font-size="9" text-anchor="middle">rejected</text>')
        cy = pad_t + plot_h + 8
        parts.append(
            f'<text x="{cx:.1f}" y="{cy:.1f}" font-size="9" text-anchor="end" transform="rotate(-45 {cx:.1f} {cy:.1f})">{label}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


#: The former name: the chart no longer shows edit Dice (the same for accepted and barely edited
#: cases) but what was changed.
dice_chart_svg = change_chart_svg


def _html(project: ReviewProject, state: ProjectState, rows: list[dict[str, Any]], thumbnails: bool) -> str:
    counts = state.counts()
    esc = html.escape
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>medloop review report: {esc(project.folder.name)}</title>",
        STYLE,
        f"<h1>Review report: {esc(str(project.folder))}</h1>",
        f"<p>Generated {esc(utc_now())} by medloop. {len(project.cases)} cases. Not for diagnosis.</p>",
    ]
    if state.problems:
        lines = ", ".join(f"line {p.line_number} ({'torn last line' if p.torn_tail else esc(p.reason)})" for p in state.problems)
        out.append(f"<p class='warn'>Audit log: incomplete or invalid {lines} (kept in the file; a write cut short by a crash).</p>")
    out.append("<h2>Status</h2><table><tr>" + "".join(f"<th>{esc(s)}</th>" for s in STATUSES) + "</tr><tr>")
    out.append("".join(f"<td class='count' data-status='{esc(s)}'>{counts[s]}</td>" for s in STATUSES) + "</tr></table>")
    out.append("<h2>What the reviewers changed (voxels per case)</h2>" + change_chart_svg(rows))
    out.append("<h2>Cases (most uncertain first)</h2><table><tr>")
    heads = ["case", "status", "uncertainty", "reviewers", "last action", "edit Dice", "voxels changed",
             "volume change (mL)", "time (s)", "clicks (s)", "model", "comments", "pins"] + (["slice"] if thumbnails else [])
    out.append("".join(f"<th>{h}</th>" for h in heads) + "</tr>")
    for r in rows:
        model = " ".join(str(v) for v in (r["model"], r["model_version"] and f"v{r['model_version']}") if v) or None
        cells = [
            _fmt(r["case"]), _fmt(r["status"]), _fmt(r["uncertainty"]), _fmt(r["reviewers"] or None),
            _fmt(" ".join(str(v) for v in (r["last_action"], r["last_reviewer"], r["last_time"]) if v) or None),
            _fmt(r["edit_dice"], 4), _fmt(r["voxels_changed"]), _fmt(r["volume_change_ml"], 3), _fmt(r["seconds"], 1),
            _fmt(None if r["prompts"] is None else f"{r['prompts']} ({_fmt(r['prompt_seconds'], 1)})"), _fmt(model), _fmt(r["comment"] or None), _fmt(r["pins"] or None),
        ]
        if thumbnails:
            try:
                uri = _case_thumbnail(project, r["case"], state)
                cells.append(f"<img alt='middle slice of {esc(r['case'])}' src='{uri}'>")
            except Exception as exc:  # noqa: BLE001 - a missing image must not stop the report
                cells.append(f"thumbnail unavailable: {esc(str(exc))}")
        out.append(f"<tr data-case='{esc(r['case'])}'>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</table></body></html>")
    return "\n".join(out)
