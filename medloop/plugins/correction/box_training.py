"""Box training (Gupta et al., MIDL 2019; spec section 2).

Stage 1: round 0 trains on the filled boxes, each later round on the Cues-1 refinement of the
previous round's prediction of the *boxed training images*, stopping once fewer than 1 % of the
pixels change. Stage 2 (only with ``unlabeled`` images): the final Stage-1 model segments the
Stage-1 images; the 2.5th-97.5th percentiles of their objects' area and eccentricity are the
Cues-2 bounds. Then, for up to :data:`STAGE2_ROUNDS` rounds, the current model segments the
unlabeled images, only objects within the bounds are kept as foreground pseudo-labels, and the
model continues training on the Stage-1 pseudo-labels plus these; it stops once fewer than 1 % of
the unlabeled pseudo-label pixels change.

Stage 2 sees only images: the unlabeled set enters as ``(C, H, W)`` arrays and its labels are the
model's own (filtered) predictions, so no truth can reach it (BX-5). The bounds are computed from
the Stage-1 images only.

:func:`train_boxes` holds the one implementation (a list of boxed images, :class:`BoxData`;
the schedule, :class:`BoxRunParams`); :func:`run_boxes_many` is its keyword form and
:func:`run_boxes` its single-image form, used by
:func:`~medloop.plugins.correction.headless.run_weak` (CLI ``medloop train --weak boxes``) and
the Correction panel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medloop.app.engine.jobs import JobCancelled
from medloop.plugins.correction.boxes import (
    AUTO_STOP_FRACTION,
    BACKGROUND,
    FOREGROUND,
    BoxError,
    apply_cues1,
    apply_cues2,
    changed_fraction,
    cues2_bounds,
    object_features,
    round0_labels,
)
from medloop.plugins.correction.weak_kit import WeakRun, predict_labels

#: Stage 2 rounds at most (the paper's 5).
STAGE2_ROUNDS = 5
#: Pseudo-label of the pixels of objects Cues 2 drops: 0 = unlabeled (ignored by the loss). The
#: paper leaves the value unstated; a dropped object may well be a true object of unusual size or
#: shape, so teaching it as background would be the worse error.
DROPPED_LABEL = 0

# train(network, labels for x or None, seed, loss_fn=None, pairs=((x2, labels2), ...)) -> FineTuneResult
TrainFn = Callable[..., Any]
# train_many(network, [(x, labels), ...], seed) -> FineTuneResult (a trained copy in .network)
TrainManyFn = Callable[..., Any]
# on_model(info, network): called after every training round (stage 1 and 2) with that round's
# info dict (keys "stage", "round", ...) and the network it produced; for evaluation/logging.
OnModelFn = Callable[[dict[str, Any], torch.nn.Module], None]


@dataclass(frozen=True)
class BoxRunParams:
    """The schedule of a box-training run (:func:`train_boxes`).

    Attributes:
        seed: round ``r`` of stage 1 trains with seed ``seed + r``, round ``r`` of stage 2 with
            ``seed + rounds + r``.
        rounds: Stage-1 rounds at most (at least 1).
        stage2_rounds: Stage-2 rounds at most (at least 1; used only with unlabeled images).
        auto_stop: a stage ends once fewer than this share of its pseudo-label pixels changed
            in a round (default 1 %; None runs every round, as the paper's fixed schedule).
    """

    seed: int = 0
    rounds: int = 3
    stage2_rounds: int = STAGE2_ROUNDS
    auto_stop: float | None = AUTO_STOP_FRACTION


@dataclass(frozen=True)
class BoxData:
    """What a box-training run learns from: ``(C, H, W)`` ``images`` with their boxes
    (``boxes[i]``: the ``(N_i, 4)`` boxes ``(y0, x0, y1, x1)`` of ``images[i]``), and
    ``unlabeled`` ``(C, H, W)`` images for stage 2 (Cues 2; none: no stage 2)."""

    images: Sequence[np.ndarray]
    boxes: Sequence[Any]
    unlabeled: Sequence[np.ndarray] = ()


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
    *,
    stage2_rounds: int = STAGE2_ROUNDS,
    on_model: OnModelFn | None = None,
    auto_stop: float | None = AUTO_STOP_FRACTION,
) -> WeakRun:
    """Stage 1 on the ``(N, 4)`` boxes ``(y0, x0, y1, x1)`` of the ``(C, H, W)`` input ``x``;
    each round continues from the previous round's network. ``unlabeled``: ``(C, H, W)`` inputs
    for stage 2 (Cues 2). ``on_round(round, labels)`` sees each Stage-1 round's training labels
    of ``x`` and finally the last pseudo-labels. The other arguments are the fields of
    :class:`BoxRunParams`; see :func:`train_boxes`."""

    def train_many(net: torch.nn.Module, pairs: Sequence[tuple[np.ndarray, np.ndarray]], round_seed: int) -> Any:
        (_, labels0), *rest = pairs  # the first pair is always (x, its labels)
        return train(net, labels0, round_seed, pairs=rest)

    run = train_boxes(
        network, BoxData([x], [annotation], unlabeled), train_many,
        BoxRunParams(seed, rounds, stage2_rounds, auto_stop), should_stop,
        on_round=(lambda r, labels: on_round(r, labels[0])) if on_round else None, on_model=on_model,
    )
    run.labels = run.labels[0]
    return run


def run_boxes_many(
    network: torch.nn.Module,
    xs: Sequence[np.ndarray],
    boxes_list: Sequence[Any],
    train_many: TrainManyFn,
    seed: int = 0,
    rounds: int = 3,
    should_stop: Callable[[], bool] | None = None,
    on_round: Callable[[int, list[np.ndarray]], None] | None = None,
    unlabeled: Sequence[np.ndarray] = (),
    *,
    stage2_rounds: int = STAGE2_ROUNDS,
    on_model: OnModelFn | None = None,
    auto_stop: float | None = AUTO_STOP_FRACTION,
) -> WeakRun:
    """:func:`train_boxes` with the fields of :class:`BoxData` and :class:`BoxRunParams` as
    arguments (the form the tests and the benchmark call)."""
    return train_boxes(
        network, BoxData(xs, boxes_list, unlabeled), train_many,
        BoxRunParams(seed, rounds, stage2_rounds, auto_stop), should_stop, on_round, on_model,
    )


def train_boxes(
    network: torch.nn.Module,
    data: BoxData,
    train_many: TrainManyFn,
    params: BoxRunParams = BoxRunParams(),
    should_stop: Callable[[], bool] | None = None,
    on_round: Callable[[int, list[np.ndarray]], None] | None = None,
    on_model: OnModelFn | None = None,
) -> WeakRun:
    """Gupta et al.'s Stage 1 on the boxed ``(C, H, W)`` images of ``data``, then Stage 2 on
    its unlabeled images if any.

    ``train_many(net, [(x, labels), ...], seed)`` trains a copy of ``net`` on paint-convention
    label maps (0 unlabeled, 1 background, 2 foreground) and returns a result with ``.network``
    and ``.metrics``. Each round continues from the previous round's network; seeds, round
    limits and the auto stop come from ``params``.

    Returns a :class:`WeakRun` whose ``labels`` is the list of final Stage-1 pseudo-labels (one
    per image), ``metrics["rounds"]`` the Stage-1 rounds, ``metrics["stage2"]`` the Stage-2
    bounds and rounds (absent without unlabeled images) and ``rounds`` all rounds, each tagged
    with its ``stage``. ``on_round(round, labels)`` sees each Stage-1 round's training labels
    and finally the last pseudo-labels. ``on_model(info, network)`` is called after every
    training round with the round's info (plus ``pseudo_labels``: the labels that network
    produced) for evaluation or display. ``should_stop()`` true before a round (or inside
    training) raises :class:`JobCancelled`; nothing is returned and ``network`` is never
    modified.
    """
    xs = [np.asarray(x) for x in data.images]
    if not xs or len(xs) != len(data.boxes):
        raise ValueError(f"need one box array per image: {len(xs)} images, {len(data.boxes)} box arrays")
    rounds = int(params.rounds)
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    boxes = [np.asarray(b) for b in data.boxes]
    round0 = [round0_labels(b, x.shape[1:]) for b, x in zip(boxes, xs)]  # validates: BoxError
    _check_unlabeled(xs, data.unlabeled)  # before any training

    def check_stop() -> None:
        if should_stop is not None and should_stop():
            raise JobCancelled()

    schedule = _Schedule(train_many, params, check_stop, on_model)
    stage1 = _stage1(schedule, network, xs, boxes, [r0.astype(np.int64) for r0 in round0], on_round)
    net, result, stage2, stage2_history = stage1.net, stage1.result, None, []
    if len(data.unlabeled):
        net, result, stage2, stage2_history = _stage2(schedule, stage1, xs, boxes, data.unlabeled)
    counts = _box_counts(xs, boxes, round0, stage1.labels)
    metrics = {
        "kind": _KIND,
        **result.metrics,
        "seed": int(params.seed),
        "rounds_done": len(stage1.history),
        "rounds_max": rounds,
        "changed_fraction": [h["changed_fraction"] for h in stage1.history],
        "auto_stopped": stage1.auto_stopped,
        "rounds": stage1.history,
    }
    if stage2 is not None:
        counts["unlabeled_images"] = len(data.unlabeled)
        metrics["stage2"] = stage2
    return WeakRun(net, _KIND, stage1.labels, counts, metrics, stage1.history + stage2_history)


_KIND = "boxes"
_TRAIN_METRICS = ("best_val_dice", "epochs_done", "final_train_loss")


@dataclass(frozen=True)
class _Schedule:
    """What every training round of a box run shares."""

    train_many: TrainManyFn
    params: BoxRunParams
    check_stop: Callable[[], None]
    on_model: OnModelFn | None

    def settled(self, changed: float) -> bool:
        """Whether a stage stops after a round that changed this share of its pseudo-labels."""
        return self.params.auto_stop is not None and changed < self.params.auto_stop


@dataclass(frozen=True)
class _Stage1:
    """The outcome of Stage 1: the last round's network and training result, its predictions of
    the boxed images and their Cues-1 pseudo-labels, and the rounds' info."""

    net: torch.nn.Module
    result: Any
    preds: list[np.ndarray]
    labels: list[np.ndarray]
    history: list[dict[str, Any]]
    auto_stopped: bool


def _stage1(
    schedule: _Schedule,
    network: torch.nn.Module,
    xs: list[np.ndarray],
    boxes: list[np.ndarray],
    labels: list[np.ndarray],
    on_round: Callable[[int, list[np.ndarray]], None] | None,
) -> _Stage1:
    """Stage 1 from the round-0 ``labels``: train, predict, refine with Cues 1, until the
    pseudo-labels settle or the rounds run out."""
    history: list[dict[str, Any]] = []
    stopped_by_change = False
    net = network
    result = None
    preds: list[np.ndarray] = []
    for r in range(int(schedule.params.rounds)):
        schedule.check_stop()
        if on_round:
            on_round(r, labels)
        result = schedule.train_many(net, list(zip(xs, labels)), schedule.params.seed + r)
        net = result.network
        preds = [predict_labels(net, x) for x in xs]
        new, resets = [], 0
        for p, b in zip(preds, boxes):
            lab, res = apply_cues1(p, b, foreground=1, return_resets=True)
            new.append(lab.astype(np.int64))
            resets += int(np.count_nonzero(res))
        frac = changed_fraction(labels, new)
        info = {
            "stage": 1,
            "round": r,
            "changed_fraction": frac,
            "boxes_reset": resets,
            "foreground_pixels": int(sum((n == FOREGROUND).sum() for n in new)),
            **{key: result.metrics.get(key) for key in _TRAIN_METRICS},
        }
        history.append(info)
        labels = new
        if schedule.on_model:
            schedule.on_model(dict(info, pseudo_labels=labels), net)
        if schedule.settled(frac):
            stopped_by_change = True
            break
    assert result is not None
    if on_round:
        on_round(len(history), labels)  # the final pseudo-labels
    return _Stage1(net, result, preds, labels, history, stopped_by_change)


def _box_counts(
    xs: list[np.ndarray], boxes: list[np.ndarray], round0: list[np.ndarray], labels: list[np.ndarray]
) -> dict[str, Any]:
    return {
        "kind": _KIND,
        "images": len(xs),
        "boxes": int(sum(len(b) for b in boxes)),
        "box_pixels": int(sum((r0 == FOREGROUND).sum() for r0 in round0)),
        "pseudo_foreground_pixels": int(sum((lab == FOREGROUND).sum() for lab in labels)),
        "pseudo_background_pixels": int(sum((lab == BACKGROUND).sum() for lab in labels)),
    }


def stage1_objects(pred: np.ndarray, boxes: Any) -> np.ndarray:
    """The Stage-1 segmentation of a boxed image whose objects Cues 2 measures: the predicted
    foreground (class 1) inside the boxes; predicted foreground outside every box is known to be
    wrong (boxes are exhaustive, Cues 1) and would skew the statistics."""
    inside = round0_labels(boxes, pred.shape) == FOREGROUND
    return (np.asarray(pred) == 1) & inside


def _check_unlabeled(xs: list[np.ndarray], unlabeled: Sequence[np.ndarray]) -> list[np.ndarray]:
    us = [np.asarray(u, dtype=np.float32) for u in unlabeled]
    for i, u in enumerate(us):
        if u.ndim != xs[0].ndim or u.shape[0] != xs[0].shape[0]:
            raise BoxError(
                f"unlabeled image {i} has shape {u.shape}; the boxed images are {xs[0].shape} "
                "(channels first, same channel count, 2-D)"
            )
    return us


def _stage2(
    schedule: _Schedule,
    stage1: _Stage1,
    xs: list[np.ndarray],
    boxes: list[np.ndarray],
    unlabeled: Sequence[np.ndarray],
) -> tuple[torch.nn.Module, Any, dict[str, Any], list[dict[str, Any]]]:
    """Stage 2 (Cues 2); see the module docstring. Reads images only."""
    max_rounds = int(schedule.params.stage2_rounds)
    if max_rounds < 1:
        raise ValueError(f"stage2_rounds must be at least 1, got {max_rounds}")
    us = _check_unlabeled(xs, unlabeled)
    # Bounds from the final Stage-1 model's segmentations of the Stage-1 images only (BX-5).
    bounds = cues2_bounds([stage1_objects(p, b) for p, b in zip(stage1.preds, boxes)])
    stage1_pairs = list(zip(xs, stage1.labels))
    seed = schedule.params.seed + int(schedule.params.rounds)
    net, result = stage1.net, stage1.result
    pl, kept, dropped = _cues2_pseudo_labels(net, us, bounds)
    history: list[dict[str, Any]] = []
    stopped_by_change = False
    for r in range(max_rounds):
        schedule.check_stop()
        pairs = stage1_pairs + [(u, p) for u, p in zip(us, pl) if (p > 0).any()]
        result = schedule.train_many(net, pairs, seed + r)
        net = result.network
        new, new_kept, new_dropped = _cues2_pseudo_labels(net, us, bounds)
        frac = changed_fraction(pl, new)
        info = {
            "stage": 2,
            "round": r,
            "objects_kept": int(kept),  # in the pseudo-labels this round trained on
            "objects_dropped": int(dropped),
            "foreground_pixels": int(sum((p == FOREGROUND).sum() for p in pl)),
            "ignored_pixels": int(sum((p == 0).sum() for p in pl)),
            "changed_fraction": frac,  # of the unlabeled pseudo-labels, after this round
            **{key: result.metrics.get(key) for key in _TRAIN_METRICS},
        }
        history.append(info)
        if schedule.on_model:
            schedule.on_model(dict(info, pseudo_labels=new), net)
        pl, kept, dropped = new, new_kept, new_dropped
        if schedule.settled(frac):
            stopped_by_change = True
            break
    summary = {
        "bounds": {
            "area": list(bounds.area),
            "eccentricity": list(bounds.eccentricity),
            "percentiles": list(bounds.percentiles),
            "stage1_objects": bounds.n_objects,
        },
        "unlabeled_images": len(us),
        "dropped_label": DROPPED_LABEL,
        "rounds_done": len(history),
        "rounds_max": max_rounds,
        "auto_stopped": stopped_by_change,
        "changed_fraction": [h["changed_fraction"] for h in history],
        "final_objects_kept": int(kept),
        "final_objects_dropped": int(dropped),
        "rounds": history,
    }
    return net, result, summary, history


def _cues2_pseudo_labels(
    model: torch.nn.Module, us: list[np.ndarray], bounds: Any
) -> tuple[list[np.ndarray], int, int]:
    """``model``'s Cues-2 pseudo-labels of the unlabeled images, and how many objects were kept
    (within ``bounds``) and dropped."""
    out, kept, dropped = [], 0, 0
    for u in us:
        fg = predict_labels(model, u) == 1
        _, areas, ecc = object_features(fg)
        inside = sum(bounds.contains(a, e) for a, e in zip(areas, ecc))
        kept += inside
        dropped += len(areas) - inside
        out.append(apply_cues2(fg, bounds, dropped=DROPPED_LABEL).astype(np.int64))
    return out, kept, dropped
