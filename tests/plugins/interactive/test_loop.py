"""Spec §7 check 6: committed objects (with their rings) train the user's model through the
Correction fine-tune unchanged, without lowering its Dice on slices 6 mm away."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from medloop.app.io.image import MedImage
from medloop.plugins.interactive.annotation import ring_values
from medloop.plugins.interactive.evaluation import Clicker, dice, first_click, next_click
from medloop.plugins.interactive.params import InteractiveParams
from medloop.plugins.interactive.prompts import Point, index_to_physical
from medloop.plugins.interactive.session import PromptSession, Ring

CLICKS, STOP = 10, 0.95  # the simulated annotator clicks until the object is right (Dice 0.95) or 10 clicks


def test_the_ring_is_2_mm_wide_only_on_unlabelled_voxels_and_takes_the_models_classes():
    obj = np.zeros((40, 40), bool)
    obj[15:25, 15:25] = True
    annotation = np.zeros((40, 40), np.uint8)
    annotation[10:30, 26] = 2  # already painted: never overwritten
    index, values = ring_values(obj, annotation, 2, (1.0, 1.0), ring_mm=2.0)
    ring = np.zeros_like(obj)
    ring[index] = True
    assert ring.sum() == (14 * 14 - 10 * 10) - 4 * 3 - 10 and set(values) == {1}  # Euclidean: 3 corner voxels each lie > 2 mm
    assert not ring[10:30, 26].any() and not (ring & obj).any()
    prediction = np.zeros((40, 40), np.int64)
    prediction[:, 20:] = 2  # the model calls the right half the object's class: left unlabelled
    prediction[:20, :20] = 1
    index, values = ring_values(obj, annotation, 2, (1.0, 1.0), ring_mm=2.0, prediction=prediction)
    assert set(values) == {1, 2} and np.all(index[1] < 20)


def _click(image, index, positive):
    return Point(tuple(float(v) for v in index_to_physical(image, np.asarray(index))[0]), positive)


def _commit_objects(image: MedImage, truth: np.ndarray, prediction: np.ndarray, count: int) -> np.ndarray:
    """A simulated annotator: white/grey matter components, largest first and alternating, each
    clicked until Dice 0.95 (at most 10 clicks); it commits an object that reached 0.90 (with a
    2 mm ring from the model's prediction) and discards the others, until ``count`` are in."""
    from scipy import ndimage as ndi

    session = PromptSession(image, np.zeros(truth.shape, np.uint8), InteractiveParams(engine="classical"))
    spacing = tuple(image.spacing[::-1])
    ranked = {}
    for cls in (1, 2):
        lab, n = ndi.label(truth == cls)
        ranked[cls] = [m for m in sorted((lab == i for i in range(1, n + 1)), key=lambda m: -int(m.sum())) if m.sum() >= 20]
    queue = [ref for pair in zip(ranked[2], ranked[1]) for ref in pair]
    queue += ranked[2][len(ranked[1]):] + ranked[1][len(ranked[2]):]
    for ref in queue:
        cls = int(truth[ref][0])
        session.params = InteractiveParams(engine="classical", label=cls + 1)
        idx, positive = first_click(ref, spacing), True
        for _ in range(CLICKS):
            session.add(_click(image, idx, positive))
            if dice(session.object_mask(), ref) >= STOP or (nxt := next_click(ref, session.object_mask(), spacing, Clicker(), np.random.default_rng(0))) is None:
                break
            idx, positive = nxt
        if dice(session.object_mask(), ref) >= 0.9:
            session.commit(Ring(class_index=cls, mm=2.0, prediction=prediction))
        else:
            session.reset_object()
            session.commit()
        if len(session.committed) == count:
            break
    assert len(session.committed) == count
    return session.labels


@pytest.mark.parametrize("axis, position", [(0, 0.5), (2, 0.3)])
def test_fine_tuning_on_five_committed_objects_does_not_lower_dice_6_mm_away(brain_sample, axis, position):
    """An axial and a sagittal slice (the model was trained on axial ones); the slices 3 voxels
    (6 mm) away on both sides are held out. Measured: 0.948 -> 0.952 and 0.919 -> 0.935 (on
    slices where fewer than 5 objects reach Dice 0.90 by clicks there is nothing to commit)."""
    from medloop.app.engine.metrics import dice_per_class
    from medloop.app.engine.resample import normalise
    from medloop.models.registry import build_model, get_model
    from medloop.plugins.correction.headless import predict_labels
    from medloop.plugins.correction.retrain import default_fine_tune_config, fine_tune

    entry = get_model("brain-tissue-t1")
    t1, tissue = brain_sample
    raw = np.asarray(t1.array, np.float32)
    vol = normalise(raw, entry.card.normalisation).astype(np.float32)
    lab = np.asarray(tissue.array).astype(np.int64)
    k = round((vol.shape[axis] - 1) * position)
    take = lambda a, j: np.ascontiguousarray(np.take(a, j, axis=axis))
    net = build_model(entry)
    x = take(vol, k)[None]
    prediction = predict_labels(net, x)
    image = MedImage.from_array(take(raw, k), spacing=(2.0, 2.0))
    annotation = _commit_objects(image, take(lab, k), prediction, 5)
    painted = annotation > 0
    assert 0.03 < painted.mean() < 0.6 and set(np.unique(annotation)) == {0, 1, 2, 3}

    def held_out(model) -> float:
        preds = np.concatenate([predict_labels(model, take(vol, j)[None]).ravel() for j in (k - 3, k + 3)])
        d = dice_per_class(preds, np.concatenate([take(lab, j).ravel() for j in (k - 3, k + 3)]), 3, False)
        return float(np.mean([d[1], d[2]]))

    before = held_out(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fine_tune(net, [(x, annotation)], default_fine_tune_config(epochs=6), mode="mini-batch", seed=0)
    after = held_out(result.network)
    assert after >= before, (before, after)
