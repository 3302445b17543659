"""The lesion classifier: learns bone phantoms quickly, is reproducible, scores other sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medloop.plugins.lesions.checks import LesionInputError
from medloop.plugins.lesions.classifier import (
    ClassifierConfig, ClassifierScorer, LesionClassifier, load_classifier, predict_proba, train_classifier,
)
from medloop.plugins.lesions.metrics import roc_auc
from medloop.plugins.lesions.phantoms import phantom_set

QUICK = ClassifierConfig(width=8, epochs=3, steps_per_epoch=12, batch=16, lr=3e-3)


def _set(seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Bone phantoms at 48 x 96 with the default (clearly visible) lytic lesions, half positive."""
    ps = phantom_set("bone", count, seed, 0.5, shape=(48, 96))
    return np.stack([p.image for p in ps]), np.array([p.has_lesion for p in ps])


@pytest.fixture(scope="module")
def trained():
    x, y = _set(1, 60)
    vx, vy = _set(2, 30)
    return train_classifier(x, y, QUICK, validation=(vx, vy))


def test_classifier_learns_bone_lesions(trained):
    tx, ty = _set(3, 60)
    auc = roc_auc(ty, predict_proba(trained.model, tx))
    # measured 1.0 for this config (48 x 96, 16 of 30 test phantoms hold a lesion); chance is 0.5
    assert auc >= 0.85
    assert trained.best_score == max(h["val_auc"] for h in trained.history)
    assert trained.steps_done == 36 and not trained.model.training


def test_same_seed_same_weights(trained):
    x, y = _set(1, 60)
    vx, vy = _set(2, 30)
    again = train_classifier(x, y, QUICK, validation=(vx, vy))
    for k, v in trained.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    other = train_classifier(x, y, ClassifierConfig(**{**QUICK.as_dict(), "seed": 1}), validation=(vx, vy))
    assert not torch.equal(other.model.features[0].weight, trained.model.features[0].weight)


def test_scorer_resizes_other_sizes(trained):
    x, y = _set(4, 4)
    scorer = ClassifierScorer(trained.model, (48, 96))
    same = scorer.score(x)
    from skimage.transform import resize

    big = np.stack([resize(a, (96, 192), order=1, mode="edge", preserve_range=True) for a in x]).astype(np.float32)
    scored_big = scorer.score(big)
    assert scored_big.shape == (4,) and np.all((scored_big >= 0) & (scored_big <= 1))
    back = np.stack([resize(a, (48, 96), order=1, mode="edge", anti_aliasing=True, preserve_range=True) for a in big])
    assert np.allclose(scored_big, predict_proba(trained.model, back.astype(np.float32)))  # resized to the trained size
    # up- then down-sampling smooths the noise, which moves scores (0.05-0.2 measured) but not the ranking
    assert roc_auc(y, scored_big) == roc_auc(y, same) == 1.0
    assert np.allclose(scorer.score(x[0]), same[:1])


def test_fully_convolutional_and_weights_roundtrip(trained):
    model = LesionClassifier(8).eval()
    assert model(torch.zeros(2, 1, 48, 80)).shape == (2,)
    state = {"classifier." + k: v for k, v in trained.model.state_dict().items()}
    x, _ = _set(5, 3)
    assert np.array_equal(predict_proba(load_classifier(state, 8), x), predict_proba(trained.model, x))


def test_bad_training_input_messages():
    x, y = _set(1, 6)
    with pytest.raises(LesionInputError, match="training labels hold 0 lesion and 6 normal images; give both"):
        train_classifier(x, np.zeros(6), QUICK)
    with pytest.raises(LesionInputError, match="6 training images but 5 labels"):
        train_classifier(x, y[:5], QUICK)
    with pytest.raises(LesionInputError, match="classifier setting epochs = 0"):
        train_classifier(x, y, ClassifierConfig(epochs=0))


def test_the_classifier_recipe_with_augmentation_records_the_filter(tmp_path):
    """``medloop train --recipe lesion-classifier-bone --augment-lesions lesion-unit-bone`` in
    miniature: the packaged translator's lesions are scored by the baseline, kept at each t and the
    validation-chosen t is recorded with the kept counts (never increasing with t)."""
    from medloop.plugins.lesions.classifier_training import train_classifier_recipe

    raw = {"name": "tiny-filter", "kind": "classifier", "data": {"seed": 3},
           "train": {"width": 4, "epochs": 1, "steps_per_epoch": 4, "batch": 8},
           "augment": {"translator": "lesion-unit-bone", "threshold": None, "synthetic_per_lesion": 2}}
    trained = train_classifier_recipe(raw, tmp_path)
    metrics = trained["metrics"]
    kept = [metrics["augment_kept_per_t"][str(t)] for t in (0.5, 0.7, 0.9)]
    assert kept == sorted(kept, reverse=True) and kept[0] <= 2 * 30
    assert metrics["augment_translator"] == "lesion-unit-bone" and metrics["augment_t"] in (None, 0.5, 0.7, 0.9)
    assert 0.0 <= metrics["auc_test"] <= 1.0 and trained["input_shape"] == [64, 128]
