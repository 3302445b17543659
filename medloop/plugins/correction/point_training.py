"""Point-click training (Qu et al.): Voronoi and cluster pseudo-labels from the clicks, then the
network is fine-tuned on them. Used by :func:`~medloop.plugins.correction.headless.run_weak`
(CLI ``medloop train --weak points``) and the Correction panel alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from medloop.plugins.correction.headless import WeakRun

# train(network, labels for x or None, seed, loss_fn=None, pairs=((x2, labels2), ...)) -> FineTuneResult
TrainFn = Callable[..., Any]


def run_points(
    network: torch.nn.Module,
    x: np.ndarray,
    annotation: Any,
    train: TrainFn,
    seed: int = 0,
    on_round: Callable[[int, np.ndarray], None] | None = None,
    crf: bool = False,
    config: Any = None,
) -> WeakRun:
    """Train ``network`` (a copy) on Voronoi + cluster labels of the ``(N, 2)`` clicks on the
    ``(C, H, W)`` input ``x``: the union of the two maps' non-ignored pixels, the Voronoi label
    winning where both say something (its point disks and cell edges are the more reliable
    cues). ``crf``: then Qu et al.'s CRF-loss fine-tune (``config``: the stage-1 TrainConfig)."""
    if crf:
        raise NotImplementedError("CRF fine-tune stage: to be implemented")
    from medloop.plugins.correction.points import cluster_labels, voronoi_labels

    spatial = x.shape[1:]
    pts = np.asarray(annotation, dtype=float) if np.size(annotation) else np.zeros((0, 2))
    vor = voronoi_labels(pts, spatial)
    clu = cluster_labels(x, pts, rng=seed)
    labels = np.where(vor > 0, vor, clu).astype(np.int64)
    if on_round:
        on_round(0, labels)
    result = train(network, labels, seed)
    info = {"round": 0, **result.metrics}
    counts = {
        "kind": "points",
        "points": int(len(pts)),
        "voronoi_pixels": int((vor > 0).sum()),
        "cluster_pixels": int((clu > 0).sum()),
        "conflicting_pixels": int(((vor > 0) & (clu > 0) & (vor != clu)).sum()),
        **result.annotation_counts,
    }
    return WeakRun(result.network, "points", labels, counts, {"kind": "points", **result.metrics, "rounds": [info]}, [info])
