"""Sparse strokes and loss balancing (spec section 1): SP-1, SP-2, SP-3 and the loss's plumbing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from medloop.app.errors import MedloopWarning
from medloop.plugins.correction.sparse import (
    EMPTY_BATCH_MESSAGE,
    balanced_loss_fn,
    choose_balancing,
    sparse_loss,
    stroke_pair,
    stroke_weights,
    validate_strokes,
)
from medloop.plugins.correction.weaklabels import AnnotationError


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def hand_case() -> np.ndarray:
    """16 px: 3 of class 1, 1 of class 2, 12 unlabeled."""
    labels = np.zeros((1, 4, 4), np.int64)
    labels[0, 0, :3] = 1
    labels[0, 3, 3] = 2
    return labels


def random_batch(seed: int, n: int = 5, k: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k + 1, (n, 12, 12))
    labels[rng.random((n, 12, 12)) < 0.7] = 0  # sparse
    labels[1, :, :6] = 2  # a patch with few classes
    return labels


# --- SP-1 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["instance", "mini-batch"])
def test_sp1_hand_case(mode):
    weights, targets = stroke_weights(hand_case(), mode)
    expected = np.zeros((1, 4, 4))
    expected[0, 0, :3] = 4 / (2 * 3)
    expected[0, 3, 3] = 4 / (2 * 1)
    np.testing.assert_allclose(weights, expected, atol=1e-6)
    assert round(float(weights[0, 0, 0]), 3) == 0.667 and float(weights[0, 3, 3]) == 2.0
    assert np.array_equal(targets, hand_case() - 1) and targets.dtype == np.int64


def per_class_sums(weights: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    return {int(c): float(weights[labels == c].sum()) for c in np.unique(labels[labels > 0])}


def test_sp1_each_class_carries_l_over_c():
    for seed in range(3):
        labels = random_batch(seed)
        w, _ = stroke_weights(labels, "mini-batch")
        total, sums = np.count_nonzero(labels), per_class_sums(w, labels)
        for s in sums.values():
            assert abs(s - total / len(sums)) < 1e-6 * total
        assert abs(w.sum() - total) < 1e-6 * total and np.all(w[labels == 0] == 0)
        w, _ = stroke_weights(labels, "instance")
        for n in range(len(labels)):  # per patch
            total, sums = np.count_nonzero(labels[n]), per_class_sums(w[n], labels[n])
            for s in sums.values():
                assert abs(s - total / len(sums)) < 1e-6 * total
            assert abs(w[n].sum() - total) < 1e-6 * total and np.all(w[n][labels[n] == 0] == 0)
        w, _ = stroke_weights(labels, "none")
        assert np.array_equal(w, (labels > 0).astype(np.float32))


def test_weights_keep_the_input_kind():
    w, t = stroke_weights(torch.from_numpy(hand_case()), "mini-batch")
    assert isinstance(w, torch.Tensor) and w.dtype == torch.float32 and t.dtype == torch.int64
    w, t = stroke_weights(hand_case().astype(np.uint8), "none")
    assert isinstance(w, np.ndarray) and w.dtype == np.float32 and t.min() == -1
    with pytest.raises(ValueError, match="balancing must be one of auto, none, instance, mini-batch"):
        stroke_weights(hand_case(), "median")


def test_auto_picks_instance_when_dense_patches_are_in_the_mix():
    labels = random_batch(0, n=8)
    assert choose_balancing(labels) == "mini-batch"
    labels[3] = 1 + (np.arange(144).reshape(12, 12) % 3)  # one fully annotated patch: 12.5 %
    assert choose_balancing(labels) == "instance"
    assert np.array_equal(stroke_weights(labels, "auto")[0], stroke_weights(labels, "instance")[0])
    assert choose_balancing(np.concatenate([labels, random_batch(1, n=8)])) == "mini-batch"  # 1/16 < 10 %


# --- SP-2 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["none", "instance", "mini-batch", "auto"])
def test_sp2_unlabeled_pixels_get_exactly_zero_gradient(mode):
    labels = random_batch(2, n=3)
    logits = torch.randn(3, 4, 12, 12, generator=torch.Generator().manual_seed(0))
    logits[:, :, 0, 0] = 1e4  # extreme values on unlabeled pixels change nothing
    labels[:, 0, 0] = 0
    logits.requires_grad_(True)
    loss = sparse_loss(logits, labels, mode)
    loss.backward()
    unlabeled = torch.from_numpy(labels == 0).unsqueeze(1).expand_as(logits)
    assert torch.isfinite(loss) and torch.all(logits.grad[unlabeled] == 0)
    assert torch.any(logits.grad[~unlabeled] != 0)


def test_sp2_an_empty_batch_is_skipped_with_a_warning():
    logits = torch.zeros(2, 3, 8, 8, requires_grad=True)
    with pytest.warns(MedloopWarning, match=EMPTY_BATCH_MESSAGE):
        assert sparse_loss(logits, np.zeros((2, 8, 8), np.int64)) is None
    assert EMPTY_BATCH_MESSAGE == "no annotated pixel in this batch; the training step is skipped"


# --- SP-3 ---------------------------------------------------------------------------------------


def test_sp3_batch_of_one_instance_equals_mini_batch():
    for seed in range(3):
        labels = random_batch(seed)[seed : seed + 1]
        a, _ = stroke_weights(labels, "instance")
        b, _ = stroke_weights(labels, "mini-batch")
        np.testing.assert_array_equal(a, b)


# --- the loss -------------------------------------------------------------------------------


def test_loss_is_weighted_ce_over_the_annotated_count():
    labels = random_batch(4)
    logits = torch.randn(5, 4, 12, 12, generator=torch.Generator().manual_seed(1))
    t = torch.from_numpy(labels)
    reference = F.cross_entropy(logits, t - 1, ignore_index=-1)  # valid mask = plain mean
    assert torch.allclose(sparse_loss(logits, labels, "none"), reference, atol=1e-6)
    w, target = stroke_weights(t, "mini-batch")
    ce = F.cross_entropy(logits, target.clamp_min(0), reduction="none")
    assert torch.allclose(sparse_loss(logits, labels, "mini-batch"), (w * ce).sum() / (t > 0).sum(), atol=1e-6)


def test_one_binary_logit_and_bad_ids():
    labels = hand_case()
    z = torch.randn(1, 1, 4, 4)
    two = torch.cat([torch.zeros_like(z), z], dim=1)
    assert torch.allclose(sparse_loss(z, labels), sparse_loss(two, labels))
    with pytest.raises(AnnotationError, match=r"label ids \[3\] exceed the model's 2 classes \(1..2 allowed\)"):
        sparse_loss(torch.zeros(1, 2, 4, 4), labels + 1)


def test_balanced_loss_fn_trains_with_train_segmentation():
    from medloop.app.engine.train import TrainConfig, train_segmentation
    from medloop.plugins.correction import synth
    from medloop.plugins.correction.weaklabels import strokes

    pairs = []
    for seed in range(2):
        s = synth.texture_mosaic(seed, num_classes=4)
        labels, _ = strokes(s.semantic, 0.05, 3, rng=seed)
        pairs.append(stroke_pair(s.image, labels))
    _, target, weight = pairs[0]
    assert set(np.unique(weight)) == {0.0, 1.0} and target.min() == 0
    # The adapter reproduces sparse_loss on the trainer's (target, weight) form.
    logits = torch.randn(1, 4, 64, 64)
    labels = torch.where(torch.from_numpy(weight) > 0, torch.from_numpy(target) + 1, 0)[None]
    fn = balanced_loss_fn("instance")
    assert torch.allclose(fn(logits, torch.from_numpy(target)[None], torch.from_numpy(weight)[None]), sparse_loss(logits, labels, "instance"))
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 3, padding=1)
    config = TrainConfig(epochs=1, steps_per_epoch=3, batch_size=2, patch_size=(32, 32), num_threads=1, num_classes=4)
    result = train_segmentation(model, pairs, None, config, loss_fn=fn)
    assert result.steps_done == 3 and all(np.isfinite(h.get("train_loss", 0.0)) for h in result.history)


# --- validation ---------------------------------------------------------------------------------


def test_validate_strokes():
    summary = validate_strokes(hand_case()[0], num_classes=2)
    assert summary == {"coverage": 0.25, "counts": {1: 3, 2: 1}}
    with pytest.raises(AnnotationError, match=r"^the annotation layer is empty; paint strokes of at least two classes$"):
        validate_strokes(np.zeros((4, 4), int), 2)
    with pytest.raises(AnnotationError, match=r"^unknown class ids \[5, 7\] in the annotation layer; the model has classes 1..4$"):
        validate_strokes(np.array([[1, 5], [7, 0]]), 4)
    one = np.array([[1, 1], [0, 0]])
    with pytest.raises(AnnotationError, match="only class 1 is annotated"):
        validate_strokes(one, 2)
    with pytest.warns(MedloopWarning, match="fine-tuning anyway"):
        validate_strokes(one, 2, fine_tune=True)
    with pytest.raises(AnnotationError, match="non-integer"):
        validate_strokes(np.array([[0.5, 1.0]]), 2)
