"""Trace image files: one image (read with its geometry) or a cohort through the engine's runner.

Each image is traced from its seeds (napari Points CSV) and written as SWC in the image's
physical units when it has a spacing (pixels otherwise). A cohort finds each image's seeds in a
seeds folder as ``<case id>.csv`` (or ``<image name>.csv``), or uses one seeds file for every image;
it writes ``<case id>.swc`` plus the runner's ``<case id>.json`` sidecar per image.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medloop.app.engine.cohort import Case, CohortProgress, CohortReport, CohortTask, cases_from, run_cohort
from medloop.plugins.axons.checks import TracingInputError
from medloop.plugins.axons.trace import Trace, TraceParams


@dataclass(frozen=True)
class TracedImage:
    """One traced image file: its traces and the geometry the SWC is written in."""

    traces: list[Trace]
    spacing: tuple[float, float] | None  # (x, y); None: pixels
    unit: str | None


def image_geometry(image: Any) -> tuple[tuple[float, float] | None, str | None]:
    """(x, y) spacing and unit of a MedImage, or (None, None) when its pixel size is unknown."""
    if str(image.unit) in ("px", "pixel", "pixels", "") or image.ndim != 2:
        return None, None
    return (float(image.spacing[0]), float(image.spacing[1])), str(image.unit)


def trace_image_file(path: str | os.PathLike[str], seeds: Any, actor: Any, params: TraceParams,
                     end_points: Any = None, progress: Callable[[int, int], None] | None = None) -> TracedImage:
    """Read ``path`` (2-D greyscale) and trace from ``seeds`` ((N, 2) row, col px)."""
    from medloop.app.io.read import read_image
    from medloop.plugins.axons.trace import trace_with

    image = read_image(path)
    spacing, unit = image_geometry(image)
    traces = trace_with(np.asarray(image.array), seeds, actor, params, end_points, progress)
    return TracedImage(traces, spacing, unit)


def trace_meta(trace: Trace) -> dict[str, Any]:
    """The facts of a trace kept in its SWC tree comment."""
    mean = float(np.mean(trace.entropy)) if len(trace.entropy) else float("nan")
    return {"seed_id": trace.seed_id, "steps": len(trace.vertices) - 1, "stop_reason": trace.stop_reason, "mean_entropy": mean}


def write_traced(path: str | os.PathLike[str], traced: TracedImage) -> Path:
    """Write a traced image's traces as SWC (one tree per seed)."""
    from medloop.plugins.axons.swc import write_swc

    return write_swc(path, [t.vertices for t in traced.traces], traced.spacing, traced.unit, [trace_meta(t) for t in traced.traces])


def seeds_for(seeds: Path, case: Case) -> Path:
    """The seeds file of ``case``: ``seeds`` itself, or ``<id>.csv`` / ``<image name>.csv`` in the folder ``seeds``."""
    if not seeds.is_dir():
        return seeds
    from medloop.app.io.read import suffix_of

    stem = case.path.name[: len(case.path.name) - len(suffix_of(case.path))] if case.path.is_file() else case.path.name
    for candidate in (seeds / f"{case.id}.csv", seeds / f"{stem}.csv"):
        if candidate.is_file():
            return candidate
    raise TracingInputError(f"no seeds for {case.path.name}: neither {case.id}.csv nor {stem}.csv in {seeds}; add one (napari Points CSV)")


def _digest(seeds: Path) -> str:
    """sha256 over the seeds file (or every CSV of the seeds folder): changed seeds recompute."""
    h = hashlib.sha256()
    for f in sorted(seeds.glob("*.csv")) if seeds.is_dir() else [seeds]:
        h.update(f.name.encode() + b"\0" + (f.read_bytes() if f.is_file() else b""))
    return h.hexdigest()


@dataclass(frozen=True)
class TraceTask(CohortTask):
    """Tracing as a cohort task: the tracker is loaded once per process."""

    model: str
    seeds: Path
    params: TraceParams

    def fingerprint(self) -> dict[str, Any]:
        from medloop.plugins.axons.tracker import load_tracker

        tracker = load_tracker(self.model)
        return {"task": "trace-axons", "model": {"name": tracker.name, "weights_sha256": tracker.sha256},
                "params": asdict(self.params), "seeds_sha256": _digest(self.seeds)}

    def load(self) -> Any:
        from medloop.plugins.axons.tracker import load_tracker

        return load_tracker(self.model).actor

    def run(self, case: Case, state: Any, out_dir: Path) -> dict[str, Any]:
        from medloop.plugins.axons.points import read_points_csv

        traced = trace_image_file(case.path, read_points_csv(seeds_for(self.seeds, case)), state, self.params)
        written = write_traced(out_dir / f"{case.id}.swc", traced)
        return {"outputs": [written.name], "traces": len(traced.traces),
                "steps": [len(t.vertices) - 1 for t in traced.traces], "stop_reasons": [t.stop_reason for t in traced.traces]}


def trace_cohort(inputs: str | os.PathLike[str], seeds: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                 model: str, params: TraceParams, *, progress: CohortProgress | None = None, **cohort: Any) -> CohortReport:
    """Trace every image of ``inputs`` (folder or list file) into ``out_dir`` (``<id>.swc`` each);
    ``cohort``: the runner's ``scheduler`` / ``workers``. Finished cases with the same tracker,
    settings and seeds are skipped; a case's bad input is recorded as its failure."""
    seeds = Path(seeds)
    if not seeds.exists():
        raise TracingInputError(f"cannot find the seeds {seeds}: no such file or folder; give a napari Points CSV or a folder of them")
    return run_cohort(cases_from(inputs), TraceTask(str(model), seeds.absolute(), params), out_dir, progress=progress, **cohort)
