"""Headless weak-label retraining: replay a session's strokes, boxes or points without Qt.

:func:`train_weak` fine-tunes a registered model on one image's weak annotation and stores the
result as the next version (:class:`~medloop.plugins.correction.versions.ModelVersions`), so the
annotations a GUI session saved can be replayed from a script or the command line and give the
same model: on the CPU the same inputs and ``seed`` give bit-identical weights.

* ``strokes``: a paint-convention label map (0 = unlabeled, k + 1 = class k) on the image grid,
  trained with the sparse, balanced stroke loss (:func:`~medloop.plugins.correction.retrain.fine_tune`).
* ``boxes``: ``(N, 4)`` boxes ``(y0, x0, y1, x1)`` (end-exclusive pixel indices) on a 2-D image, Gupta
  et al.'s stage 1: round 0 trains on the filled boxes (foreground 2, everything else background
  1); each later round trains on the Cues-1 refinement of the previous round's prediction
  (:func:`~medloop.plugins.correction.boxes.apply_cues1`). At most ``rounds`` rounds; refinement
  stops early once fewer than 1 % of the pixels change (``AUTO_STOP_FRACTION``). Each round
  continues from the previous round's network.
* ``points``: ``(N, 2)`` ``(row, column)`` clicks on nuclei of a 2-D image, Qu et al.'s Voronoi
  and cluster pseudo-labels. ``fine_tune`` takes no loss function, so instead of the point loss
  (``L_vor + L_cluster``) the network is trained with the sparse stroke loss on ONE map: the
  union of the two maps' non-ignored pixels, where the Voronoi label wins where both say
  something (its point disks and cell edges are the more reliable cues). That weighs a pixel
  labelled by both maps once instead of twice and balances the classes per ``mode``.

The network sees the image on its own grid (no resampling to the model's spacing: the
annotation lives on this grid), normalised as the card says. Box and point training need a
two-class (background / foreground) 2-D model. ``should_stop`` cancels with
:class:`~medloop.app.engine.jobs.JobCancelled`; nothing is saved then.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medloop.app.errors import MedloopError
from medloop.app.io.image import MedImage
from medloop.plugins.correction.box_training import run_boxes
from medloop.plugins.correction.boxes import BoxError
from medloop.plugins.correction.point_training import run_points
from medloop.plugins.correction.weak_kit import (
    WeakRun,
    is_slice_input,
    model_input,
    num_classes,
    predict_labels,
    predict_on_grid,
    slice_by_slice,
)
from medloop.plugins.correction.weaklabels import AnnotationError

__all__ = [
    "KINDS",
    "WeakParams",
    "WeakRun",
    "load_annotation",
    "model_input",
    "predict_labels",
    "predict_on_grid",
    "slice_by_slice",
    "run_weak",
    "train_weak",
]

KINDS = ("strokes", "boxes", "points")


# ------------------------------------------------------------------------------- input / output


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise AnnotationError(f"unknown annotation kind {kind!r}; use one of {', '.join(KINDS)}")


def _read_table(path: Path, columns: int, what: str, error: type[MedloopError]) -> np.ndarray:
    """Numbers of a .csv (optional header) or .npy file as a float (N, columns) array. A napari
    Points export (columns ``axis-0``, ``axis-1``...) gives its last ``columns`` axis columns."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise error(f"cannot read {what} from {path} ({exc}); save them with numpy.save") from None
        a = np.asarray(a, dtype=float) if a.dtype.kind in "biuf" else a
    elif suffix == ".csv":
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
        except (OSError, UnicodeDecodeError) as exc:
            raise error(f"cannot read {what} from {path} ({exc})") from None
        header = None
        if rows:
            try:
                [float(c) for c in rows[0]]
            except ValueError:
                header, rows = [c.strip() for c in rows[0]], rows[1:]
        take: list[int] | None = None
        if header is not None:
            axes = [i for i, c in enumerate(header) if c.startswith("axis-")]
            if len(axes) >= columns:
                take = axes[-columns:]
        try:
            data = [[float(r[i]) for i in take] if take else [float(c) for c in r] for r in rows]
        except (ValueError, IndexError):
            raise error(f"{path} holds non-numeric {what}; write one row of {columns} numbers per item") from None
        widths = {len(r) for r in data}
        if len(widths) > 1:
            raise error(f"{path}: rows have different numbers of values {sorted(widths)}; write {columns} per row")
        a = np.asarray(data, dtype=float).reshape(len(data), widths.pop() if widths else columns)
    else:
        raise error(f"cannot read {what} from {path}: use a .csv or .npy file")
    if a.dtype.kind not in "biuf":
        raise error(f"{path} holds {a.dtype} data; {what} must be numbers")
    return a


def load_annotation(kind: str, path: str | Path) -> np.ndarray:
    """A saved annotation: ``strokes`` from a label image (anything ``read_image`` reads, or a
    .npy) as an int64 paint-convention map; ``boxes`` ``(N, 4)`` int64 or ``points`` ``(N, 2)``
    float from a .csv (optional header row) or .npy file. Shapes and values are checked by
    :func:`train_weak`."""
    _check_kind(kind)
    p = Path(path)
    if not p.is_file():
        raise AnnotationError(f"annotation file {p} does not exist; check the path")
    if kind == "strokes":
        if p.suffix.lower() == ".npy":
            a = np.load(p, allow_pickle=False)
        else:
            from medloop.app.io.read import read_image

            img = read_image(p)
            if img.channel_axis:
                raise AnnotationError(f"{p} has colour channels; a stroke annotation is a single-channel label image")
            a = np.asarray(img.array)
        if a.dtype.kind == "f":
            if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
                raise AnnotationError(f"{p} is not a label image: its values are not whole numbers")
        elif a.dtype.kind not in "biu":
            raise AnnotationError(f"{p} holds {a.dtype} data, not labels")
        return a.astype(np.int64)
    if kind == "boxes":
        a = _read_table(p, 4, "boxes", BoxError)
        if a.ndim != 2 or a.shape[1] != 4:
            raise BoxError(f"Boxes must be an (N, 4) array of (y0, x0, y1, x1), got shape {a.shape}.")
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise BoxError("Boxes must hold whole pixel indices (y0, x0, y1, x1).")
        return a.astype(np.int64)
    a = _read_table(p, 2, "points", AnnotationError)
    if a.ndim != 2 or a.shape[1] != 2:
        raise AnnotationError(f"points must be an (N, 2) array of (row, column) coordinates, got shape {a.shape}")
    return a.astype(float)


# ------------------------------------------------------------------------------------ training


def _config(epochs: int | None, x: np.ndarray, card: Any, network: torch.nn.Module, config: Any) -> Any:
    from medloop.plugins.correction.retrain import default_fine_tune_config

    cfg = default_fine_tune_config() if config is None else config
    if epochs is not None:
        cfg = replace(cfg, epochs=int(epochs))
    if cfg.patch_size is None:
        roi = card.inference.get("roi_size") if card is not None else None
        spatial = x.shape[2:] if is_slice_input(network, x) else x.shape[1:]
        if roi:
            roi = [int(roi)] * len(spatial) if np.isscalar(roi) else [int(r) for r in roi][-len(spatial) :]
            if any(s > r for s, r in zip(spatial, roi)):  # large image: train on tiles of the ROI size
                d = int(getattr(network, "divisible_by", 1) or 1)
                cfg = replace(cfg, patch_size=tuple(-(-min(s, r) // d) * d for s, r in zip(spatial, roi)))
    return cfg


@dataclass
class WeakParams:
    """How :func:`run_weak` / :func:`train_weak` retrain (the annotation and model are arguments)."""

    seed: int = 0
    epochs: int | None = None  # overrides ``config.epochs``
    mode: str = "auto"  # stroke-loss balancing: none, instance, mini-batch, auto
    rounds: int = 3  # box refinement rounds at most
    # A TrainConfig; default :func:`~medloop.plugins.correction.retrain.default_fine_tune_config`.
    config: Any = None
    crf: bool = False  # points: Qu et al.'s CRF-loss fine-tune stage
    # boxes: unlabeled images for Gupta et al.'s stage 2 (Cues 2)
    unlabeled: Sequence[MedImage | np.ndarray] = ()
    boundary: bool = False  # strokes: generalised Dice + boundary loss (Kervadec et al.)
    # strokes: the pixels nobody painted (retrain.FineTuneParams.unannotated): select, pseudo, off
    unannotated: str = "select"
    note: str = ""  # train_weak: the saved version's note (default: says what was trained)
    # ``on_round(round, labels)`` sees each round's training labels (round 0 first); for boxes a
    # last call ``on_round(rounds_done, final pseudo-labels)`` follows.
    on_round: Callable[[int, np.ndarray], None] | None = None
    progress: Callable[..., None] | None = None
    should_stop: Callable[[], bool] | None = None  # cancels with JobCancelled


def run_weak(
    kind: str,
    image: MedImage | np.ndarray,
    annotation: Any,
    base: Any,
    params: WeakParams | None = None,
    **changes: Any,
) -> WeakRun:
    """Train (without saving) on one image's weak annotation; see the module docstring.

    ``base``: a :class:`~medloop.models.registry.ModelEntry` or a network (never modified).
    ``image``: a :class:`MedImage` (normalised per the entry's card) or an already prepared
    ``(C, *spatial)`` array. ``params``: :class:`WeakParams`; ``changes`` (its field names, e.g.
    ``seed``, ``epochs``, ``config``, ``crf``, ``progress``) override its fields.
    """
    p = replace(params or WeakParams(), **changes)
    _check_kind(kind)
    network, card, x = _weak_input(image, base)
    k = num_classes(network)
    cfg = _config(p.epochs, x, card, network, p.config)
    if int(p.rounds) < 1:
        raise ValueError(f"rounds must be at least 1, got {p.rounds}")
    train = _FineTune(x, cfg, p)
    if kind == "strokes":
        return _run_strokes(network, x, annotation, train, k, p)
    error = BoxError if kind == "boxes" else AnnotationError
    if x.ndim - 1 != 2:
        raise error(f"{kind} are 2-D annotations; the image is {x.ndim - 1}-D")
    if k != 2:
        raise error(f"{kind} training needs a two-class (background / foreground) model; this one scores {k} classes")
    if kind == "points":
        return run_points(network, x, annotation, train, seed=p.seed, on_round=p.on_round, crf=p.crf, config=cfg)
    extra = [model_input(u, card) if isinstance(u, MedImage) else np.ascontiguousarray(u, dtype=np.float32) for u in p.unlabeled]
    return run_boxes(
        network, x, annotation, train, seed=p.seed, rounds=int(p.rounds), should_stop=p.should_stop,
        on_round=p.on_round, unlabeled=extra,
    )


def _weak_input(image: MedImage | np.ndarray, base: Any) -> tuple[torch.nn.Module, Any, np.ndarray]:
    """``(network, card or None, (C, *spatial) float32 input)`` for ``base`` and ``image``."""
    from medloop.models.registry import ModelEntry, build_model

    card = base.card if isinstance(base, ModelEntry) else None
    network = build_model(base) if isinstance(base, ModelEntry) else base
    if not isinstance(network, torch.nn.Module):
        raise MedloopError(f"run_weak needs a ModelEntry or a torch network, got {type(base).__name__}")
    if isinstance(image, MedImage):
        if card is None:
            raise MedloopError("give a prepared (C, *spatial) array with a bare network, or a ModelEntry with a MedImage")
        return network, card, model_input(image, card)
    return network, card, np.ascontiguousarray(image, dtype=np.float32)


class _FineTune:
    """run_weak's ``train(net, labels, seed, loss_fn=None, pairs=(), anchor=0.0)`` callback for
    the box and point trainers: fine-tune a copy of ``net`` on ``(x, labels)`` (skipped when
    None) and ``pairs``. ``anchor`` (strokes only: box and point pseudo-labels are dense) keeps
    the starting model's confident predictions on unannotated pixels."""

    def __init__(self, x: np.ndarray, config: Any, params: WeakParams) -> None:
        self.x, self.config, self.params = x, config, params

    def __call__(
        self, net: torch.nn.Module, labels: np.ndarray | None, round_seed: int, loss_fn: Any = None, pairs: Any = (),
        anchor: float = 0.0, unannotated: str = "off",
    ) -> Any:
        from medloop.plugins.correction import retrain

        p = self.params
        todo = ([(self.x, labels)] if labels is not None else []) + list(pairs)
        return retrain.fine_tune(
            net, todo, self.config, mode=p.mode, progress=p.progress, should_stop=p.should_stop,
            seed=round_seed, raise_on_stop=True, loss_fn=loss_fn, anchor=anchor, unannotated=unannotated,
        )


def _run_strokes(network: torch.nn.Module, x: np.ndarray, annotation: Any, train: _FineTune, k: int, p: WeakParams) -> WeakRun:
    from medloop.plugins.correction.retrain import DEFAULT_ANCHOR

    spatial = x.shape[1:]
    s = np.asarray(annotation)
    if s.shape != spatial:
        raise AnnotationError(f"annotation shape {s.shape} does not match the image's spatial shape {spatial}")
    if s.dtype.kind == "f" and not np.all(s == np.round(s)):
        raise AnnotationError("the stroke annotation must hold whole label numbers")
    s = s.astype(np.int64)
    if p.on_round:
        p.on_round(0, s)
    loss_fn = None
    if p.boundary:
        from medloop.plugins.correction.boundary_training import boundary_loss_fn

        loss_fn = boundary_loss_fn(train.config, k)
    if is_slice_input(network, x):  # a volume and a slice-by-slice 2-D model
        pairs = [(x[:, z], s[z]) for z in range(s.shape[0]) if s[z].any()]
        if not pairs:
            raise AnnotationError("the annotation layer is empty; paint strokes of at least two classes")
        result = train(network, None, p.seed, loss_fn=loss_fn, pairs=pairs, anchor=DEFAULT_ANCHOR, unannotated=p.unannotated)
    else:
        result = train(network, s, p.seed, loss_fn=loss_fn, anchor=DEFAULT_ANCHOR, unannotated=p.unannotated)
    info = {"round": 0, **result.metrics}
    return WeakRun(
        result.network, "strokes", s,
        annotation_counts={"kind": "strokes", **result.annotation_counts},
        metrics={"kind": "strokes", **result.metrics, "rounds": [info]},
        rounds=[info],
    )


def train_weak(
    kind: str,
    image: MedImage,
    annotation: Any,
    model: str,
    out_root: Path,
    models_dir: Path | None = None,
    params: WeakParams | None = None,
    **changes: Any,
) -> Any:
    """Retrain ``model`` on ``image``'s weak ``annotation`` and save the next version under
    ``out_root``; returns the new version's :class:`~medloop.models.registry.ModelEntry`.

    ``model``: a registered base model's name (or folder), trained from the base itself, or
    ``"<name>@v<N>"``, trained from that version under ``out_root``. The new version's card
    records that start as its parent (the version state is moved there first if another
    version was current; nothing is deleted), the annotation counts and the metrics
    (for boxes the per-round changed fraction). Training from the same start with the same
    annotation and ``seed`` gives identical weights (on the CPU). ``params``/``changes`` as
    :func:`run_weak`.
    """
    from medloop.models.registry import get_model
    from medloop.plugins.correction.versions import ModelVersions, split_version_name

    p = replace(params or WeakParams(), **changes)
    _check_kind(kind)
    base_name, start = split_version_name(str(model))
    base = get_model(base_name, models_dir)
    versions = ModelVersions(Path(out_root), base)
    start_entry = versions.entry(start)  # ModelNotFoundError for a missing version
    run = run_weak(kind, image, annotation, start_entry, p)
    if versions.current != start:
        versions.rollback(start)  # so the saved version's parent is the version trained from
    return versions.save(
        run.network,
        metrics=run.metrics,
        annotation_counts=run.annotation_counts,
        note=p.note or f"headless {kind} retraining from {versions.name_of(start)} (seed {int(p.seed)})",
    )
