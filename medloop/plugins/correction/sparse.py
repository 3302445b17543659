"""Sparse stroke annotations and loss balancing (Bokhorst et al., MIDL 2019; spec section 1).

Labels use the paint convention: 0 = unlabeled, k + 1 = class k. Every annotated pixel (i, j)
gets a cross-entropy weight w_ij, unlabeled pixels weight 0 (no loss, exactly zero gradient):

* ``"none"`` (valid mask): w = 1.
* ``"instance"``: w = L_I / (C_I * C_ij) with, per patch, L_I annotated pixels, C_I classes
  present and C_ij the pixels of the class at (i, j).
* ``"mini-batch"``: the same with counts over the whole batch (L_B, C_B).
* ``"auto"``: ``"instance"`` when >= 10 % of the patches are fully annotated (dense labels in the
  mix: batch-level counts would drown them), otherwise ``"mini-batch"``.

Either way each present class carries total weight L / C and the weights sum to L. The paper
does not say how the weighted sum is normalised; :func:`sparse_loss` divides by the batch's
annotated-pixel count L_B.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from medloop.app.errors import MedloopWarning
from medloop.plugins.correction.weaklabels import AnnotationError

__all__ = [
    "BALANCING",
    "balanced_loss_fn",
    "choose_balancing",
    "sparse_loss",
    "stroke_pair",
    "stroke_weights",
    "validate_strokes",
]

BALANCING = ("auto", "none", "instance", "mini-batch")
AUTO_DENSE_FRACTION = 0.1  # spec: instance balancing once >= 10 % of patches are fully annotated
EMPTY_BATCH_MESSAGE = "no annotated pixel in this batch; the training step is skipped"


def _as_tensor(labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.asarray(labels))
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"stroke labels must be integers, got {t.dtype}")
    if t.ndim < 2:
        raise ValueError(f"stroke labels must be (N, *spatial), got shape {tuple(t.shape)}")
    return t.long()


def choose_balancing(labels: np.ndarray | torch.Tensor, dense_fraction: float = AUTO_DENSE_FRACTION) -> str:
    """``"instance"`` when at least ``dense_fraction`` of the patches ``labels`` (N, *spatial) are
    fully annotated, else ``"mini-batch"``. Call it once on a sample of patches for a run-level
    choice; ``stroke_weights(mode="auto")`` applies it to each batch."""
    t = _as_tensor(labels)
    full = (t.flatten(1) > 0).all(dim=1).float()
    return "instance" if float(full.mean()) >= dense_fraction else "mini-batch"


def _balanced(target: torch.Tensor, valid: torch.Tensor, num_classes: int) -> torch.Tensor:
    """w = L / (C * C_ij) over the whole of ``target``/``valid`` (one patch or one batch)."""
    counts = torch.bincount(target[valid], minlength=num_classes).to(torch.float64)
    present = int((counts > 0).sum())
    if present == 0:
        return torch.zeros(target.shape, dtype=torch.float64)
    per_class = torch.where(counts > 0, counts.sum() / (present * counts.clamp_min(1)), torch.zeros_like(counts))
    return torch.where(valid, per_class[target.clamp_min(0)], torch.zeros((), dtype=torch.float64))


def stroke_weights(
    labels: np.ndarray | torch.Tensor, mode: str = "none", dense_fraction: float = AUTO_DENSE_FRACTION
) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
    """Per-pixel weights and targets for a batch of stroke maps ``labels`` (N, *spatial).

    Returns ``(weights, targets)`` of the same shape and kind (numpy in, numpy out; torch in,
    torch on the same device out): float32 weights, 0 on unlabeled pixels, per ``mode`` (see the
    module docstring); int64 targets = label - 1, so -1 on unlabeled pixels (weight 0, ignored).
    Axis 0 is always the batch: pass a single map as ``labels[None]``.
    """
    if mode not in BALANCING:
        raise ValueError(f"balancing must be one of {', '.join(BALANCING)}; got {mode!r}")
    t = _as_tensor(labels)
    device = t.device
    t = t.cpu()
    if t.numel() and int(t.min()) < 0:
        raise ValueError("stroke labels must be >= 0 (0 = unlabeled)")
    if mode == "auto":
        mode = choose_balancing(t, dense_fraction)
    valid = t > 0
    target = t - 1
    num_classes = int(t.max()) if t.numel() else 0
    if mode == "none":
        weights = valid.to(torch.float64)
    elif mode == "mini-batch":
        weights = _balanced(target, valid, num_classes)
    else:
        weights = torch.stack([_balanced(target[n], valid[n], num_classes) for n in range(t.shape[0])])
    weights = weights.to(torch.float32)
    if isinstance(labels, torch.Tensor):
        return weights.to(device), target.to(device)
    return weights.numpy(), target.numpy()


def sparse_loss(logits: torch.Tensor, labels: np.ndarray | torch.Tensor, mode: str = "mini-batch") -> torch.Tensor | None:
    """Balanced cross-entropy on strokes: ``sum(w * CE) / L_B`` (L_B = annotated pixels in the batch).

    ``logits`` (N, K, *spatial) (K = 1: one binary logit, ids 1 = background, 2 = foreground);
    ``labels`` (N, *spatial) in the paint convention with ids 0..K.
    Unlabeled pixels add nothing and get exactly zero gradient. A batch without any annotated
    pixel returns ``None`` after a :class:`MedloopWarning`: skip that optimiser step (a zero loss
    would still move Adam's parameters through its momentum).
    """
    t = _as_tensor(labels).to(logits.device)
    if logits.ndim >= 3 and logits.shape[1] == 1:
        # One binary logit z: the two-class softmax of (0, z) is (1 - sigmoid(z), sigmoid(z)).
        logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
    if t.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"labels shape {tuple(t.shape)} does not match logits {tuple(logits.shape)} (want (N, *spatial))")
    if int(t.max()) > logits.shape[1]:
        ids = sorted(int(v) for v in torch.unique(t[t > logits.shape[1]]))
        raise AnnotationError(f"label ids {ids} exceed the model's {logits.shape[1]} classes (1..{logits.shape[1]} allowed)")
    annotated = int((t > 0).sum())
    if annotated == 0:
        warnings.warn(EMPTY_BATCH_MESSAGE, MedloopWarning, stacklevel=2)
        return None
    weights, target = stroke_weights(t, mode)
    weights = weights.to(logits.dtype)
    # Unlabeled pixels get a valid class so cross_entropy accepts them; the masked select below
    # (not a multiply) keeps even inf/nan logits there out of the loss and its gradient.
    per_pixel = F.cross_entropy(logits, target.clamp_min(0), reduction="none")
    valid = weights > 0
    return (per_pixel[valid] * weights[valid]).sum() / annotated


def balanced_loss_fn(mode: str = "mini-batch") -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A ``loss_fn(logits, target, weight)`` for :func:`medloop.app.engine.train.train_segmentation`.

    The trainer's pairs carry ``label = value - 1`` and ``weight`` > 0 on annotated pixels; this
    rebuilds the stroke map and applies :func:`sparse_loss`. An unannotated batch (warned) gives
    a zero loss still tied to the graph, because the trainer cannot skip steps; avoid it by
    sampling patches with annotation.
    """

    def loss_fn(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        labels = torch.where(weight > 0, target.long() + 1, torch.zeros_like(target, dtype=torch.long))
        value = sparse_loss(logits, labels, mode)
        return (logits * 0).sum() if value is None else value

    return loss_fn


def stroke_pair(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image, target, weight)`` for ``train_segmentation`` with :func:`balanced_loss_fn`:
    target = label - 1 (0 where unlabeled), weight = 1 on annotated pixels, 0 elsewhere."""
    a = np.asarray(labels).astype(np.int64)
    return image, np.maximum(a - 1, 0), (a > 0).astype(np.float32)


def validate_strokes(
    labels: np.ndarray, num_classes: int, fine_tune: bool = False
) -> dict[str, object]:
    """Check a stroke layer before training; return what to show first.

    Raises :class:`AnnotationError` for non-integer values, negative ids, ids > ``num_classes``
    (listed), an all-zero layer, or a single class when training from scratch (a
    :class:`MedloopWarning` when fine-tuning). Returns ``{"coverage": annotated fraction,
    "counts": {class id: pixels}}``.
    """
    a = np.asarray(labels)
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool) and not (
        np.all(np.isfinite(a)) and np.all(a == np.round(a))
    ):
        raise AnnotationError("the annotation layer holds non-integer values; paint with integer class ids")
    a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise AnnotationError("the annotation layer holds negative ids; use 0 for unlabeled and 1..K for classes")
    unknown = sorted(int(v) for v in np.unique(a[a > num_classes]))
    if unknown:
        raise AnnotationError(f"unknown class ids {unknown} in the annotation layer; the model has classes 1..{num_classes}")
    counts = {int(k): int(c) for k, c in enumerate(np.bincount(a.ravel(), minlength=num_classes + 1)) if k > 0 and c > 0}
    if not counts:
        raise AnnotationError("the annotation layer is empty; paint strokes of at least two classes")
    if len(counts) == 1:
        (only,) = counts
        message = f"only class {only} is annotated; a model learns nothing from one class"
        if not fine_tune:
            raise AnnotationError(message + " - paint at least one other class")
        warnings.warn(message + " - fine-tuning anyway", MedloopWarning, stacklevel=2)
    return {"coverage": float(np.count_nonzero(a)) / a.size, "counts": counts}
