"""Tracing metrics (Dai et al., spec §A "Evaluation").

* coverage: % of true-centreline keypoints (every 1 px) with a trace point within 3 px, the trace
  densified to 0.25 px;
* error: mean and SD over trace vertices of the distance to the true centreline, leaving out
  "lost" stretches (error > 11 px for more than 5 consecutive vertices);
* entropy on / off track: mean policy entropy of the steps taken from vertices < 3 px / >= 3 px
  from the centreline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medloop.plugins.axons.checks import check_path
from medloop.plugins.axons.geometry import densify, project, resample

COVER_RADIUS_PX = 3.0
LOST_ERROR_PX = 11.0
LOST_STEPS = 5  # a stretch longer than this is lost
KEYPOINT_SPACING_PX = 1.0
TRACE_SPACING_PX = 0.25


@dataclass
class TraceMetrics:
    """One trace against its true centreline."""

    coverage: float  # % of keypoints covered
    error_mean: float  # px, lost stretches left out (nan if nothing is left)
    error_sd: float
    n_lost: int  # lost stretches
    errors: np.ndarray  # (N,) per-vertex distance to the centreline
    kept: np.ndarray  # (N,) bool: vertices counted in the error
    entropy_on: np.ndarray  # entropies of on-track steps
    entropy_off: np.ndarray  # entropies of off-track steps


def coverage(vertices: np.ndarray, true_path: np.ndarray, radius: float = COVER_RADIUS_PX) -> float:
    """% of keypoints (every 1 px along ``true_path``) within ``radius`` of the trace (densified to 0.25 px)."""
    from scipy.spatial import cKDTree

    keys = resample(check_path(true_path), KEYPOINT_SPACING_PX)
    dense = densify(vertices, TRACE_SPACING_PX)
    near, _ = cKDTree(dense).query(keys, distance_upper_bound=radius + 1e-9)
    return 100.0 * float(np.mean(np.isfinite(near)))


def lost_stretches(errors: np.ndarray, threshold: float = LOST_ERROR_PX, longest_kept: int = LOST_STEPS) -> tuple[np.ndarray, int]:
    """(mask of vertices in lost stretches, their number): runs of more than ``longest_kept``
    consecutive vertices with error above ``threshold``."""
    far = np.concatenate([[0], (np.asarray(errors) > threshold).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(far)).reshape(-1, 2)
    lost = np.zeros(len(errors), dtype=bool)
    n = 0
    for a, b in edges:
        if b - a > longest_kept:
            lost[a:b] = True
            n += 1
    return lost, n


def evaluate_trace(vertices: np.ndarray, true_path: np.ndarray, entropy: np.ndarray | None = None) -> TraceMetrics:
    """Coverage, error and entropy on/off track of one trace; ``entropy[i]`` is the step taken at vertex i."""
    truth = check_path(true_path)
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    errors = project(vertices, truth)[0]
    lost, n_lost = lost_stretches(errors)
    kept = errors[~lost]
    ent = np.asarray(entropy if entropy is not None else [], dtype=np.float64)
    on = errors[: len(ent)] < COVER_RADIUS_PX
    return TraceMetrics(
        coverage(vertices, truth),
        float(kept.mean()) if len(kept) else float("nan"),
        float(kept.std()) if len(kept) else float("nan"),
        n_lost, errors, ~lost, ent[on], ent[~on],
    )


def summarise(metrics: Sequence[TraceMetrics]) -> dict[str, float]:
    """Mean coverage over traces; error mean / SD over all kept vertices pooled; lost stretches;
    mean entropy on / off track over all steps (nan where there are none)."""
    kept = np.concatenate([m.errors[m.kept] for m in metrics]) if metrics else np.zeros(0)
    on = np.concatenate([m.entropy_on for m in metrics]) if metrics else np.zeros(0)
    off = np.concatenate([m.entropy_off for m in metrics]) if metrics else np.zeros(0)
    nan = float("nan")
    return {
        "coverage": float(np.mean([m.coverage for m in metrics])) if metrics else nan,
        "error": float(kept.mean()) if len(kept) else nan,
        "error_sd": float(kept.std()) if len(kept) else nan,
        "lost": float(sum(m.n_lost for m in metrics)),
        "entropy_on": float(on.mean()) if len(on) else nan,
        "entropy_off": float(off.mean()) if len(off) else nan,
    }
