"""Point-click training (Qu et al., MIDL 2019; spec weak-supervision.md section 3): Voronoi and
cluster pseudo-labels from the clicks, the network trained on L_ce = L_vor + L_cluster, then
optionally a CRF-loss fine-tune. Used by :func:`~medloop.plugins.correction.headless.run_weak`
(CLI ``medloop train --weak points [--crf]``), the Correction panel and the benchmark alike.

How the two maps reach the loss. Training augments an image and ONE label map together, so the
two pseudo-label maps (0 ignored / 1 background / 2 nucleus each) are encoded into one integer
map ``code = voronoi + 3 * cluster`` (0..8, 0 = both ignored; nearest-neighbour resampling keeps
codes intact) and decoded inside the loss (:class:`PointLoss`). ``PointLoss.label_values = 9``
tells :func:`~medloop.plugins.correction.retrain.fine_tune` that the map is such an encoding:
it is range-checked, not validated as classes, and nothing is held out for validation (Qu et
al. train the weak models without validation: there are no masks).

How the CRF term sees the image. L_pair needs the (augmented) image of each batch, which a loss
``loss_fn(logits, target, weight)`` is not given. :class:`InputStash` is a forward pre-hook on
the network that keeps its latest input batch; :class:`CrfPointLoss` reads it, so L_pair uses
exactly the pixels the logits came from. The hook is a plain function, so the deep copy that
training makes of the network carries it (``copy.deepcopy`` shares functions); the returned
network is a clean copy without it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from medloop.plugins.correction.weak_kit import WeakRun
from medloop.plugins.correction.retrain import InputStash
from medloop.plugins.correction.points import CrfParams, crf_point_loss, point_loss

__all__ = [
    "CRF_BETA",
    "CRF_EPOCH_FRACTION",
    "CRF_LR_FACTOR",
    "LABEL_VALUES",
    "CrfPointLoss",
    "InputStash",
    "PointLoss",
    "decode_maps",
    "encode_maps",
    "run_points",
    "value_range",
]

# train(network, labels for x or None, seed, loss_fn=None, pairs=((x2, labels2), ...)) -> FineTuneResult
TrainFn = Callable[..., Any]

LABEL_VALUES = 9  # codes 0..8 = voronoi + 3 * cluster
CRF_BETA = 1.0  # weight of the windowed, per-pixel L_pair (re-tuned; the paper's 0.0005 is for its sum)
CRF_EPOCH_FRACTION = 1 / 6  # Qu et al.: 60 epochs, then 10 CRF epochs
CRF_LR_FACTOR = 0.1  # ... at lr / 10


# --- the encoded label map ------------------------------------------------------------------------


def encode_maps(voronoi: np.ndarray, cluster: np.ndarray) -> np.ndarray:
    """One int64 map ``voronoi + 3 * cluster`` (values 0..8) from two pseudo-label maps (0/1/2)."""
    v, c = np.asarray(voronoi).astype(np.int64), np.asarray(cluster).astype(np.int64)
    if v.shape != c.shape:
        raise ValueError(f"voronoi {v.shape} and cluster {c.shape} maps differ in shape")
    for name, m in (("voronoi", v), ("cluster", c)):
        if m.size and (m.min() < 0 or m.max() > 2):
            raise ValueError(f"the {name} map must hold 0 (ignored), 1 (background) or 2 (nucleus)")
    return v + 3 * c


def decode_maps(code: torch.Tensor | np.ndarray) -> tuple[Any, Any]:
    """``(voronoi, cluster)`` maps from :func:`encode_maps` codes (tensor or array)."""
    return code % 3, code // 3


class PointLoss:
    """``loss_fn(logits, target, weight)`` for training: decodes ``target`` (codes of
    :func:`encode_maps`) and returns :func:`~medloop.plugins.correction.points.point_loss`
    (L_vor + L_cluster, each averaged over its own non-ignored pixels of the batch).
    ``voronoi=False`` / ``cluster=False`` drop a term (the benchmark's single-map conditions).
    ``weight`` is not needed: code 0 is ignored by both terms."""

    label_values = LABEL_VALUES

    def __init__(self, voronoi: bool = True, cluster: bool = True):
        if not (voronoi or cluster):
            raise ValueError("use at least one of the two maps")
        self.voronoi, self.cluster = bool(voronoi), bool(cluster)

    def maps(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = target.long()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= LABEL_VALUES):
            raise ValueError(f"point-training targets must be codes 0..{LABEL_VALUES - 1} (voronoi + 3 * cluster)")
        vor, clu = decode_maps(t)
        return (vor if self.voronoi else torch.zeros_like(vor)), (clu if self.cluster else torch.zeros_like(clu))

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        vor, clu = self.maps(target)
        return point_loss(logits, vor, clu)


class CrfPointLoss(PointLoss):
    """L_crf = L_ce + beta * L_pair (:func:`~medloop.plugins.correction.points.crf_point_loss`) with
    the image taken from ``stash`` (the network input of the batch the logits came from).
    Colours are read in [0, ``value_range``] units on Qu et al.'s 0-255 scale (s_rgb = 10)."""

    def __init__(
        self,
        stash: InputStash,
        beta: float = CRF_BETA,
        s_pq: float = 10.0,
        s_rgb: float = 10.0,
        radius: int = 5,
        value_range: float = 1.0,
    ):
        super().__init__()
        self.stash, self.beta, self.s_pq, self.s_rgb, self.radius = stash, float(beta), float(s_pq), float(s_rgb), int(radius)
        self.value_range = float(value_range)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        image = self.stash.latest
        if image.shape[0] != logits.shape[0] or image.shape[2:] != logits.shape[2:]:
            raise RuntimeError(f"stashed input {tuple(image.shape)} does not match the logits {tuple(logits.shape)}")
        vor, clu = self.maps(target)
        params = CrfParams(self.beta, self.s_pq, self.s_rgb, self.radius, self.value_range)
        return crf_point_loss(logits, vor, clu, image.to(logits.dtype), params)


def value_range(*images: np.ndarray) -> float:
    """max - min over ``images`` (1.0 for a flat image): the colour scale the CRF term reads."""
    lo = min(float(np.min(i)) for i in images)
    hi = max(float(np.max(i)) for i in images)
    return hi - lo if hi > lo else 1.0


# --- training ------------------------------------------------------------------------------------


def _stage_info(result: Any, stage: str, round_: int, **extra: Any) -> dict[str, Any]:
    history = getattr(result.train, "history", None) or []
    lr = history[-1].get("lr") if history else None
    return {"round": round_, "stage": stage, **result.metrics, "lr": lr, **extra}


def run_points(
    network: torch.nn.Module,
    x: np.ndarray,
    annotation: Any,
    train: TrainFn,
    seed: int = 0,
    on_round: Callable[[int, np.ndarray], None] | None = None,
    crf: bool = False,
    config: Any = None,
    *,
    beta: float = CRF_BETA,
    s_pq: float = 10.0,
    s_rgb: float = 10.0,
) -> WeakRun:
    """Train ``network`` (a copy) on the Voronoi and cluster labels of the ``(N, 2)`` clicks on
    the ``(C, H, W)`` input ``x`` with Qu et al.'s L_ce = L_vor + L_cluster (:class:`PointLoss`),
    no validation. ``train``: run_weak's callback (fine_tune on ``(x, labels)``); the labels
    given to it, ``on_round(0, ...)`` and ``WeakRun.labels`` are the :func:`encode_maps` codes.

    ``crf``: then a CRF-loss fine-tune (:class:`CrfPointLoss`, ``beta``, ``s_pq``, ``s_rgb``)
    for ``CRF_EPOCH_FRACTION`` of the epochs at ``CRF_LR_FACTOR`` x the learning rate.
    ``config`` must be the TrainConfig object ``train`` uses (run_weak passes it): the stage sets
    its ``lr`` and ``epochs`` while it runs and restores them afterwards. The lr and epochs that
    really ran are read back from the training history into the stage's metrics.

    Never sees a truth mask: only the image and the clicks (PT-5). Deterministic for a seed.
    """
    if crf and config is None:
        raise ValueError("the CRF stage needs config: the TrainConfig object that train() uses")
    x = np.asarray(x, dtype=np.float32)
    pts, vor, clu = _point_maps(x, annotation, seed)
    labels = encode_maps(vor, clu)
    if on_round:
        on_round(0, labels)
    result = train(network, labels, seed, loss_fn=PointLoss())
    rounds = [_stage_info(result, "points", 0)]
    counts = {
        "kind": "points",
        "points": len(pts),
        "voronoi_pixels": int((vor > 0).sum()),
        "cluster_pixels": int((clu > 0).sum()),
        "conflicting_pixels": int(((vor > 0) & (clu > 0) & (vor != clu)).sum()),
        **result.annotation_counts,
    }
    trained = result.network
    if crf:
        trained, result2 = _crf_stage(trained, x, labels, train, config, seed, CrfParams(beta, s_pq, s_rgb))
        rounds.append(_stage_info(result2, "crf", 1, beta=float(beta), s_pq=float(s_pq), s_rgb=float(s_rgb)))
    metrics = {"kind": "points", **result.metrics, "crf": bool(crf), "rounds": rounds}
    if crf:
        metrics["crf_stage"] = rounds[1]
    return WeakRun(trained, "points", labels, counts, metrics, rounds)


def _point_maps(x: np.ndarray, annotation: Any, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The clicks ``(N, 2)`` and their Voronoi and cluster pseudo-label maps on ``x``."""
    from medloop.plugins.correction.points import cluster_labels, voronoi_labels

    pts = np.asarray(annotation, dtype=float) if np.size(annotation) else np.zeros((0, 2))
    vor = voronoi_labels(pts, x.shape[1:])
    clu = cluster_labels(x, pts, rng=seed)
    return pts, vor, clu


def _crf_stage(
    stage1: torch.nn.Module,
    x: np.ndarray,
    labels: np.ndarray,
    train: TrainFn,
    config: Any,
    seed: int,
    crf: CrfParams,
) -> tuple[torch.nn.Module, Any]:
    """The CRF-loss fine-tune of the stage-1 network (seed ``seed + 1``, ``CRF_LR_FACTOR`` x the
    learning rate for ``CRF_EPOCH_FRACTION`` of the epochs; ``config`` is restored afterwards):
    a hook-free copy of ``stage1`` with the fine-tuned weights, and the training result."""
    work = copy.deepcopy(stage1)
    stash = InputStash()
    handle = stash.attach(work)
    loss = CrfPointLoss(stash, crf.beta, crf.s_pq, crf.s_rgb, crf.radius, value_range=value_range(x))
    old = (config.lr, config.epochs)
    try:
        config.lr = old[0] * CRF_LR_FACTOR
        config.epochs = max(1, round(old[1] * CRF_EPOCH_FRACTION))
        result = train(work, labels, seed + 1, loss_fn=loss)
    finally:
        config.lr, config.epochs = old
        handle.remove()
    trained = copy.deepcopy(stage1)  # hook-free, loaded with the fine-tuned weights
    trained.load_state_dict(result.network.state_dict())
    trained.eval()
    return trained, result
