"""Which cases a reviewer should look at first: model uncertainty per voxel and per case.

Why: review time is scarce; cases where the model doubts itself are where errors hide. Two
signals, both from the model alone (no reference needed):

* **predictive entropy** of the per-class probabilities, normalised to 0..1 by ``log(K)``; the
  case score is its mean over the predicted structure (labels > 0), so a large confident
  background does not dilute a doubtful lesion;
* **flip disagreement**: the model is run on mirrored inputs (test-time augmentation) and the
  predictions, mirrored back, are compared; the score is the fraction of the predicted structure
  (union of all foregrounds) where they do not all agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medloop.app.errors import MedloopError
from medloop.app.io.image import MedImage


class UncertaintyError(MedloopError):
    """Probabilities or predictions that cannot give an uncertainty."""


def entropy_map(probabilities: np.ndarray, channel_axis: int = -1) -> np.ndarray:
    """Per-voxel predictive entropy normalised to 0 (certain) .. 1 (uniform), float32.

    ``probabilities`` holds K >= 2 class probabilities along ``channel_axis`` (they are
    renormalised, so softmax outputs with rounding are fine).
    """
    p = np.moveaxis(np.asarray(probabilities, dtype=np.float64), channel_axis, -1)
    k = p.shape[-1]
    if k < 2:
        raise UncertaintyError(
            f"probabilities with {k} class along axis {channel_axis} give no entropy; pass all K >= 2 class probabilities"
        )
    if not np.isfinite(p).all() or (p < 0).any():
        raise UncertaintyError("probabilities contain negative, NaN or infinite values; pass softmax outputs")
    total = p.sum(axis=-1, keepdims=True)
    p = np.divide(p, total, out=np.full_like(p, 1.0 / k), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return (-terms.sum(axis=-1) / np.log(k)).astype(np.float32)


def entropy_score(entropy: np.ndarray, labels: np.ndarray) -> float:
    """Mean entropy over the predicted structure (labels > 0); over every voxel when the
    prediction is empty (then the doubt is whether something was missed)."""
    e = np.asarray(entropy, dtype=np.float64)
    fg = np.asarray(labels) > 0
    if fg.shape != e.shape:
        raise UncertaintyError(f"entropy map {e.shape} and labels {fg.shape} differ in shape; use the same grid")
    return float(e[fg].mean() if fg.any() else e.mean())


def flip_disagreement(predictions: Sequence[np.ndarray]) -> float:
    """Fraction of the predicted structure where label maps (on one grid) disagree.

    0 when all agree (or all are empty), 1 when their foregrounds do not overlap at all.
    """
    if len(predictions) < 2:
        raise UncertaintyError("flip disagreement needs at least two predictions (the original and a mirrored run)")
    stack = np.stack([np.asarray(p) for p in predictions])
    union = (stack > 0).any(axis=0)
    if not union.any():
        return 0.0
    differs = (stack != stack[:1]).any(axis=0)
    return float(np.count_nonzero(differs & union) / np.count_nonzero(union))


def flipped_predictions(
    image: MedImage,
    predict: Callable[[MedImage], np.ndarray],
    axes: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """Label maps of ``image`` mirrored along each array axis in ``axes`` (default: the in-plane
    y and x axes), each mirrored back onto the original grid.

    ``predict`` maps a MedImage to labels on its grid (e.g. ``segment(...).labels.array``). The
    geometry is kept as is: the model sees a mirrored anatomy, which is the point of the test.
    """
    n = image.ndim
    chosen = tuple(axes) if axes is not None else tuple(range(n - 2, n))
    out = []
    array = np.asarray(image.array)
    for axis in chosen:
        if not 0 <= axis < n:
            raise UncertaintyError(f"flip axis {axis} does not exist in a {n}-D image; use 0..{n - 1}")
        mirrored = image.with_array(np.ascontiguousarray(np.flip(array, axis)))
        out.append(np.ascontiguousarray(np.flip(np.asarray(predict(mirrored)), axis)))
    return out


def uncertainty_summary(
    probabilities: MedImage | np.ndarray | None,
    labels: np.ndarray,
    flipped: Sequence[np.ndarray] = (),
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The entropy map (or None without probabilities) and the case's scores.

    Scores: ``entropy`` (see :func:`entropy_score`), ``flip_disagreement`` (when ``flipped``
    predictions are given) and ``score``: the one cases are sorted by (entropy if known, else
    flip disagreement, else None).
    """
    emap = None
    scores: dict[str, Any] = {"entropy": None, "flip_disagreement": None}
    if probabilities is not None:
        if isinstance(probabilities, MedImage):
            if not probabilities.channel_axis:
                raise UncertaintyError(
                    f"{probabilities.path or 'the probabilities'} has no class axis; pass the per-class probabilities "
                    "('medloop segment --probabilities')"
                )
            probs = np.asarray(probabilities.array)
        else:
            probs = np.asarray(probabilities)
        emap = entropy_map(probs, channel_axis=-1)
        scores["entropy"] = entropy_score(emap, labels)
    if flipped:
        scores["flip_disagreement"] = flip_disagreement([np.asarray(labels), *flipped])
    scores["score"] = scores["entropy"] if scores["entropy"] is not None else scores["flip_disagreement"]
    return emap, scores
