"""Box training (Gupta et al.) stage 1: round 0 trains on the filled boxes, each later round on
the Cues-1 refinement of the previous round's prediction, stopping once fewer than 1 % of the
pixels change. Used by :func:`~medloop.plugins.correction.headless.run_weak` (CLI
``medloop train --weak boxes``) and the Correction panel alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from medloop.app.engine.jobs import JobCancelled
from medloop.plugins.correction.boxes import (
    AUTO_STOP_FRACTION,
    BACKGROUND,
    FOREGROUND,
    apply_cues1,
    changed_fraction,
    round0_labels,
)
from medloop.plugins.correction.headless import WeakRun, predict_labels

# train(network, labels for x or None, seed, loss_fn=None, pairs=((x2, labels2), ...)) -> FineTuneResult
TrainFn = Callable[..., Any]


def run_boxes(
    network: torch.nn.Module,
    x: np.ndarray,
    annotation: Any,
    train: TrainFn,
    seed: int = 0,
    rounds: int = 3,
    should_stop: Callable[[], bool] | None = None,
    on_round: Callable[[int, np.ndarray], None] | None = None,
    unlabeled: Sequence[np.ndarray] = (),
) -> WeakRun:
    """Stage 1 on the ``(N, 4)`` boxes ``(y0, x0, y1, x1)`` of the ``(C, H, W)`` input ``x``;
    each round continues from the previous round's network. ``unlabeled``: ``(C, H, W)`` inputs
    for stage 2 (Cues 2)."""
    if len(unlabeled):
        raise NotImplementedError("stage 2: to be implemented")
    spatial = x.shape[1:]
    kind = "boxes"
    boxes = np.asarray(annotation)
    labels = round0_labels(boxes, spatial).astype(np.int64)  # validates: BoxError on bad boxes
    n_boxes = int(len(boxes))
    history: list[dict[str, Any]] = []
    stopped_by_change = False
    net = network
    result = None
    for r in range(rounds):
        if should_stop is not None and should_stop():
            raise JobCancelled()
        if on_round:
            on_round(r, labels)
        result = train(net, labels, seed + r)
        net = result.network
        pred = predict_labels(net, x)
        new, resets = apply_cues1(pred, boxes, foreground=1, return_resets=True)
        frac = changed_fraction(labels, new)
        history.append(
            {
                "round": r,
                "changed_fraction": frac,
                "boxes_reset": int(np.count_nonzero(resets)),
                "foreground_pixels": int((new == FOREGROUND).sum()),
                **{key: result.metrics.get(key) for key in ("best_val_dice", "epochs_done", "final_train_loss")},
            }
        )
        labels = new.astype(np.int64)
        if frac < AUTO_STOP_FRACTION:
            stopped_by_change = True
            break
    assert result is not None
    if on_round:
        on_round(len(history), labels)  # the final pseudo-labels
    counts = {
        "kind": kind,
        "boxes": n_boxes,
        "box_pixels": int((round0_labels(boxes, spatial) == FOREGROUND).sum()),
        "pseudo_foreground_pixels": int((labels == FOREGROUND).sum()),
        "pseudo_background_pixels": int((labels == BACKGROUND).sum()),
    }
    metrics = {
        "kind": kind,
        **result.metrics,
        "seed": int(seed),
        "rounds_done": len(history),
        "rounds_max": rounds,
        "changed_fraction": [h["changed_fraction"] for h in history],
        "auto_stopped": stopped_by_change,
        "rounds": history,
    }
    return WeakRun(net, kind, labels, counts, metrics, history)


