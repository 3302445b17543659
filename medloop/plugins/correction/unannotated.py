"""What stroke training does with the pixels nobody painted (issue #18 §2).

Held-out strokes validate only where the annotator painted: a model that labels the never-painted
far background as tissue still scores 0.95 on them. Two signals cover the rest:

* **agreement** with a :class:`~medloop.plugins.correction.pixel_teacher.PixelTeacher` (a random
  forest fitted on the training strokes) on the unannotated pixels where the forest is confident:
  mean Dice over classes. Model selection and early stopping use the mean of the held-out stroke
  Dice and this agreement (``unannotated="select"``, the default).
* **change**: the share of unannotated pixels whose predicted class changed since the previous
  validation (prediction stability, as box rounds report it); reported in the curve, not scored.

``unannotated="pseudo"`` also trains on the forest's confident labels at ``pseudo_weight`` of a
stroke pixel (plain cross-entropy averaged over them, beside the balanced stroke loss).
Qt-free.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from medloop.plugins.correction.sparse import sparse_loss

__all__ = [
    "PSEUDO_MARK",
    "UNANNOTATED",
    "UnannotatedCheck",
    "agreement_dice",
    "stroke_and_pseudo_loss",
    "teacher_labels",
    "with_pseudo",
]

UNANNOTATED = ("off", "select", "pseudo")
#: The weight value that marks a pseudo-labelled pixel in a training pair (strokes carry 1);
#: augmentation resamples weights nearest-neighbour, so the mark survives exactly.
PSEUDO_MARK = 0.5
DEFAULT_PSEUDO_WEIGHT = 0.5
DEFAULT_CONFIDENCE = 0.9


def teacher_labels(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], num_classes: int, seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE, exclude: Sequence[np.ndarray | None] = (),
) -> list[np.ndarray]:
    """For each ``(image, training strokes)`` pair, the forest's confident labels (paint
    convention) on the pixels that are neither painted nor in ``exclude`` (held-out strokes)."""
    from medloop.plugins.correction.pixel_teacher import confident_labels, fit_pixel_teacher

    teacher = fit_pixel_teacher(pairs, num_classes, seed=seed)
    out = []
    for n, (image, strokes) in enumerate(pairs):
        sure = confident_labels(teacher.probabilities(image), confidence)
        taken = np.asarray(strokes) > 0
        if n < len(exclude) and exclude[n] is not None:
            taken |= np.asarray(exclude[n]) > 0
        out.append(np.where(taken, 0, sure))
    return out


def with_pseudo(strokes: np.ndarray, pseudo: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(label, weight)`` of a training pair: strokes (weight 1), then pseudo-labels on the
    unpainted pixels (weight :data:`PSEUDO_MARK`), 0 elsewhere."""
    s = np.asarray(strokes).astype(np.int64)
    if pseudo is None:
        return s, (s > 0).astype(np.float32)
    p = np.asarray(pseudo).astype(np.int64)
    label = np.where(s > 0, s, p)
    weight = np.where(s > 0, 1.0, np.where(p > 0, PSEUDO_MARK, 0.0)).astype(np.float32)
    return label, weight


def stroke_and_pseudo_loss(mode: str, pseudo_weight: float = DEFAULT_PSEUDO_WEIGHT) -> Callable[..., torch.Tensor]:
    """``loss_fn(logits, label, weight)``: the balanced stroke loss on weight-1 pixels plus
    ``pseudo_weight`` x the mean cross-entropy on pseudo-labelled (weight :data:`PSEUDO_MARK`)
    pixels. Either part is left out when its batch has no such pixel."""

    def loss_fn(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        painted = weight >= 1.0
        labels = torch.where(painted, target.long(), torch.zeros_like(target, dtype=torch.long))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unannotated patch: no stroke term this step
            value = sparse_loss(logits, labels, mode)
        total = (logits * 0).sum() if value is None else value
        pseudo = (weight > 0) & ~painted
        if pseudo.any():
            ce = F.cross_entropy(logits, (target.long() - 1).clamp_min(0), reduction="none")
            total = total + pseudo_weight * ce[pseudo].mean()
        return total

    return loss_fn


def agreement_dice(pred: np.ndarray, check: np.ndarray) -> float | None:
    """Mean over the classes in ``check`` (paint convention; 0 = not checked) of the Dice
    between ``pred == k`` and ``check == k + 1`` on the checked pixels; None if none."""
    mask = check > 0
    if not mask.any():
        return None
    p, t = pred[mask], check[mask] - 1
    scores = []
    for k in np.unique(t):
        a, b = p == k, t == k
        scores.append(2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1))
    return float(np.mean(scores))


@dataclass
class UnannotatedCheck:
    """The loop's ``validate``: held-out stroke Dice (``stroke_validate``, may be None) and the
    two unannotated signals on the training ``images``. ``checks``: the teacher's confident
    labels per image (paint convention), ``free``: each image's unannotated pixels."""

    images: list[np.ndarray]
    checks: list[np.ndarray]
    free: list[np.ndarray]
    predict: Callable[[Any, np.ndarray], np.ndarray]
    stroke_validate: Callable[[Any], dict[str, Any]] | None = None
    _previous: list[np.ndarray] = field(default_factory=list)

    def __call__(self, model: Any) -> dict[str, Any]:
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                preds = [np.asarray(self.predict(model, x)) for x in self.images]
        finally:
            model.train(was_training)
        agreement = agreement_dice(
            np.concatenate([p.ravel() for p in preds]), np.concatenate([c.ravel() for c in self.checks])
        )
        record: dict[str, Any] = {"unannotated_agreement": agreement, "unannotated_change": self._change(preds)}
        parts = [] if agreement is None else [agreement]
        if self.stroke_validate is not None:
            strokes = self.stroke_validate(model)
            record.update(strokes)
            record["val_stroke_dice"] = strokes["val_mean_dice"]
            if np.isfinite(strokes["val_mean_dice"]):
                parts.append(float(strokes["val_mean_dice"]))
        record["val_mean_dice"] = float(np.mean(parts)) if parts else float("nan")
        return record

    def _change(self, preds: list[np.ndarray]) -> float | None:
        previous, self._previous = self._previous, preds
        if not previous:
            return None
        changed = sum(int(np.count_nonzero((a != b) & f)) for a, b, f in zip(preds, previous, self.free))
        return changed / max(sum(int(f.sum()) for f in self.free), 1)
