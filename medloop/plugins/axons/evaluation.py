"""Traces against true centrelines, both read from SWC files (``medloop axons evaluate``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from medloop.plugins.axons.checks import TracingInputError, check_path, check_positive
from medloop.plugins.axons.metrics import coverage, evaluate_trace, summarise


def _pairs(n_traces: int, n_truth: int, traces: Any, truth: Any) -> list[tuple[int, int]]:
    """(trace, truth) index pairs: in order when the counts match, else every trace against one truth."""
    if n_traces == n_truth:
        return [(i, i) for i in range(n_traces)]
    if n_truth == 1:
        return [(i, 0) for i in range(n_traces)]
    raise TracingInputError(
        f"{traces} has {n_traces} traces and {truth} {n_truth} true paths; give one true path per trace (same order) "
        "or a single true path")


def evaluate_files(
    traces_path: str | os.PathLike[str],
    truth_path: str | os.PathLike[str],
    radius: float = 3.0,
    spacing: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Coverage within ``radius`` px, error mean / SD px (lost stretches left out) and lost
    stretches of every trace, and over all (errors pooled); coordinates back in pixels through
    each file's voxel separation or ``spacing`` (x, y)."""
    from medloop.plugins.axons.swc import read_swc

    check_positive(radius=radius)
    traces, truth = read_swc(traces_path, spacing), read_swc(truth_path, spacing)
    for j, path in enumerate(truth.paths):
        try:
            check_path(path, j)
        except TracingInputError as exc:
            raise TracingInputError(f"{truth_path}: {exc}") from None
    rows, scores = [], []
    for i, j in _pairs(len(traces.paths), len(truth.paths), traces_path, truth_path):
        m = evaluate_trace(traces.paths[i], truth.paths[j])
        m.coverage = coverage(traces.paths[i], truth.paths[j], radius)
        scores.append(m)
        rows.append({"trace": i, "truth": j, "radius": radius, "coverage": m.coverage, "error": m.error_mean,
                     "error_sd": m.error_sd, "lost": m.n_lost, "vertices": len(traces.paths[i])})
    total = summarise(scores)
    keep = ("coverage", "error", "error_sd", "lost")
    return {"traces": rows, "all": {"radius": radius, **{k: total[k] for k in keep}}}
