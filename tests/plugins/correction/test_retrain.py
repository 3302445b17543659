"""Retraining core: live head on cached features, and full fine-tune on strokes."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch

from medloop.app.engine.jobs import JobCancelled
from medloop.app.engine.metrics import dice_per_class
from medloop.app.engine.train import TrainConfig, predict_whole
from medloop.models.nets.unet import UNet
from medloop.plugins.correction import synth, weaklabels
from medloop.plugins.correction.retrain import (
    LiveHead,
    LiveSession,
    default_fine_tune_config,
    fine_tune,
    fit_head,
    live_features,
    output_conv,
    predict_with_head,
    split_strokes,
)
from medloop.plugins.correction.weaklabels import AnnotationError


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def net(seed: int = 0, features=(8, 16, 32), in_channels: int = 3, out_channels: int = 4) -> UNet:
    torch.manual_seed(seed)
    return UNet(2, in_channels, out_channels, features=features, up="bilinear")


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def snapshot(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def mean_dice(pred: np.ndarray, truth: np.ndarray, k: int = 4) -> float:
    return float(np.nanmean(list(dice_per_class(pred, truth, k, False).values())))


# ------------------------------------------------------------------------------------- live


@pytest.mark.parametrize("size", [64, 62])  # 62: not divisible by 4, padded then cropped
def test_features_and_initial_head_reproduce_the_model(size):
    model = net(1)
    model.train()  # mode is restored afterwards
    image = synth.texture_mosaic(3, size=64).image[:, :size, :size]
    before = snapshot(model)
    feats = live_features(model, image)
    assert model.training and states_equal(before, snapshot(model))
    assert feats.shape == (8, size, size) and feats.dtype == torch.float32
    model.eval()
    with torch.inference_mode():
        pad = (-size) % model.divisible_by
        x = torch.from_numpy(np.pad(image, [(0, 0), (0, pad), (0, pad)], mode="edge"))[None]
        logits = model(x)[0, :, :size, :size]
    head = LiveHead.from_conv(output_conv(model))
    torch.testing.assert_close(head(feats), logits, atol=1e-5, rtol=1e-5)
    labels, probs = predict_with_head(feats, head)
    assert np.array_equal(labels, logits.argmax(0).numpy())
    assert probs.shape == (4, size, size) and np.allclose(probs.sum(0), 1, atol=1e-5)
    session = LiveSession(model, image)
    assert np.array_equal(session.predict()[0], labels)
    if size == 64:
        assert np.array_equal(labels, predict_whole(model, image, model.divisible_by)[0])


def test_tiled_features_match_whole_image_shape():
    model = net(2)
    image = synth.texture_mosaic(4, size=64).image
    tiled = live_features(model, image, roi_size=32, overlap=0.5)
    whole = live_features(model, image)
    assert tiled.shape == whole.shape and tiled.dtype == torch.float32 and torch.isfinite(tiled).all()
    # GroupNorm normalises per tile, so values differ from one pass, but they stay correlated.
    assert np.corrcoef(tiled.ravel().numpy(), whole.ravel().numpy())[0, 1] > 0.5


def test_live_update_improves_dice_on_texture_mosaic():
    """A randomly initialised U-Net, strokes at <= 5 % coverage: Dice against truth rises."""
    gains = []
    for seed in (0, 1, 2):
        s = synth.texture_mosaic(seed, size=128)
        strokes, coverage = weaklabels.strokes(s.semantic, 0.049, rng=seed)
        assert 0 < coverage <= 0.05
        model = net(seed)
        before = snapshot(model)
        session = LiveSession(model, s.image)
        d0 = mean_dice(session.predict()[0], s.semantic)
        d1 = mean_dice(session.update(strokes), s.semantic)
        print(f"seed {seed}: coverage {coverage:.3f}, Dice {d0:.3f} -> {d1:.3f}")
        assert d1 > d0
        gains.append(d1 - d0)
        assert states_equal(before, snapshot(model))  # the model itself is never changed
    assert np.mean(gains) > 0.15


def test_update_warm_starts_and_network_with_head():
    s = synth.texture_mosaic(5, size=64)
    strokes, _ = weaklabels.strokes(s.semantic, 0.05, rng=5)
    model = net(5)
    session = LiveSession(model, s.image, steps=40, warm_steps=0)
    first = session.update(strokes)
    again = session.update(strokes)  # zero steps from the previous head: nothing moves
    assert np.array_equal(first, again) and session.updates == 2
    trained = session.network_with_head()
    assert np.array_equal(predict_whole(trained, s.image, trained.divisible_by)[0], first)
    assert not states_equal(snapshot(trained), snapshot(model))
    session.reset()
    assert np.array_equal(session.predict()[0], predict_whole(model, s.image, model.divisible_by)[0])
    # Continuing training from the previous head differs from restarting from the model's.
    warm = fit_head(session.features, strokes, 4, steps=5, init=trained.head)
    cold = fit_head(session.features, strokes, 4, steps=5, init=output_conv(model))
    assert not torch.equal(warm.weight, cold.weight)


def test_only_annotated_pixels_teach_the_head():
    s = synth.texture_mosaic(6, size=64)
    strokes, _ = weaklabels.strokes(s.semantic, 0.05, rng=6)
    feats = live_features(net(6), s.image)
    changed = feats.clone()
    changed[:, strokes == 0] = torch.randn_like(changed[:, strokes == 0]) * 10  # unlabeled features are irrelevant
    a = fit_head(feats, strokes, 4, steps=10, init=output_conv(net(6)))
    b = fit_head(changed, strokes, 4, steps=10, init=output_conv(net(6)))
    torch.testing.assert_close(a.weight, b.weight)
    torch.testing.assert_close(a.bias, b.bias)


def test_binary_single_logit_model():
    s = synth.tiny_blobs(1)
    image = s.image
    truth = s.semantic
    strokes = np.zeros(truth.shape, np.int32)
    strokes[:8, :8] = 1  # background
    strokes[truth == 1] = 2
    if not (strokes == 2).any():
        strokes[30:33, 30:33] = 2
    model = net(3, in_channels=image.shape[0], out_channels=1)
    session = LiveSession(model, image)
    labels = session.update(strokes)
    assert labels.shape == truth.shape and session.probs.shape == (2, *truth.shape)
    assert set(np.unique(labels)) <= {0, 1}
    assert (labels[strokes == 2] == 1).mean() > 0.5


def test_bad_strokes_are_rejected():
    image = synth.texture_mosaic(0, size=32).image
    session = LiveSession(net(0), image)
    with pytest.raises(AnnotationError, match="shape"):
        session.update(np.zeros((31, 32), np.int32))
    with pytest.raises(AnnotationError, match="empty"):
        session.update(np.zeros((32, 32), np.int32))
    bad = np.zeros((32, 32), np.int32)
    bad[0, 0] = 5
    with pytest.raises(AnnotationError, match=r"\[5\]"):
        session.update(bad)
    with pytest.raises(ValueError):
        fit_head(session.features, np.ones((32, 32), np.int32), 4, mode="bogus", init=session.head)


def test_live_update_latency_512():
    """One 512 x 512 image, U-Net 16-128, one thread: update() after the first stays interactive."""
    model = UNet(2, 3, 4, features=(16, 32, 64, 128))
    rng = np.random.default_rng(0)
    image = rng.random((3, 512, 512), dtype=np.float32)
    truth = np.zeros((512, 512), np.int64)
    truth[:, 256:], truth[256:, :256], truth[:256, :256] = 1, 2, 3
    strokes, coverage = weaklabels.strokes(truth, 0.05, rng=0)
    session = LiveSession(model, image)
    t0 = time.perf_counter()
    session.update(strokes)
    first = time.perf_counter() - t0
    times = []
    for i in range(5):
        more = strokes.copy()
        more[10 + i * 20 : 13 + i * 20, 300:340] = 2  # the user keeps painting
        t0 = time.perf_counter()
        session.update(more)
        times.append(time.perf_counter() - t0)
    print(
        f"\nlive update 512x512, coverage {coverage:.3f}: first (with features) {first:.2f} s, "
        f"later median {np.median(times):.3f} s, p95 {np.percentile(times, 95):.3f} s"
    )
    assert max(times) < 2.0


# -------------------------------------------------------------------------------- fine-tune


def test_split_strokes_partitions_by_component():
    s = synth.texture_mosaic(2, size=64)
    strokes, _ = weaklabels.strokes(s.semantic, 0.05, per_class_counts=[5, 5, 5, 5], rng=2)
    train, val = split_strokes(strokes, 0.4, rng=0)
    assert not ((train > 0) & (val > 0)).any()
    assert np.array_equal(np.where(val > 0, val, train), strokes)
    assert (val > 0).any()
    for k in np.unique(strokes[strokes > 0]):
        assert (train == k).any()  # every class keeps training strokes
    again = split_strokes(strokes, 0.4, rng=0)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    single = np.zeros((16, 16), np.int64)
    single[2:5, 2:9] = 1
    tr, va = split_strokes(single, 0.5, rng=0)
    assert np.array_equal(tr, single) and not va.any()  # one stroke only: stays for training


def test_split_strokes_is_stable_when_a_stroke_is_added():
    """Successive fine-tunes validate on nearly the same strokes: a new stroke moves at most
    one component per class between the maps (the others keep their side)."""
    from scipy import ndimage

    s = synth.texture_mosaic(2, size=64)
    strokes, _ = weaklabels.strokes(s.semantic, 0.05, per_class_counts=[8, 8, 8, 8], rng=3)
    _, before = split_strokes(strokes, 0.2, rng=(5, 0))
    structure = ndimage.generate_binary_structure(2, 2)
    away = ndimage.distance_transform_edt(strokes == 0) > 6  # a new component, joined to none
    y, x = np.argwhere(away & (s.semantic == 0))[0]
    more = strokes.copy()
    more[y, x : x + 4] = np.where(more[y, x : x + 4] == 0, 1, more[y, x : x + 4])
    assert ndimage.label(more == 1, structure)[1] == ndimage.label(strokes == 1, structure)[1] + 1
    _, after = split_strokes(more, 0.2, rng=(5, 0))
    for k in np.unique(strokes[strokes > 0]):
        comps, n = ndimage.label(strokes == k, structure)
        moved = sum(int((before[comps == c] > 0).any() != (after[comps == c] > 0).any()) for c in range(1, n + 1))
        assert moved <= 1, (k, moved)
    assert (before > 0).any()


def small_pairs(n: int = 2):
    pairs, truths = [], []
    for i, s in enumerate(synth.dataset("mosaic", n, seed=11, size=32)):
        strokes, _ = weaklabels.strokes(s.semantic, 0.05, margin=2, per_class_counts=[3, 3, 3, 3], rng=i)
        pairs.append((s.image, strokes))
        truths.append(s.semantic)
    return pairs, truths


def small_config(**changes):
    return default_fine_tune_config(**{"epochs": 3, "steps_per_epoch": 3, "batch_size": 2, **changes})


def test_fine_tune_is_deterministic_and_leaves_the_caller_model_alone():
    pairs, _ = small_pairs()
    model = net(0, features=(4, 8))
    before = snapshot(model)
    a = fine_tune(model, pairs, small_config(), mode="mini-batch", seed=3)
    b = fine_tune(model, pairs, small_config(), mode="mini-batch", seed=3)
    c = fine_tune(model, pairs, small_config(), mode="mini-batch", seed=4)
    assert states_equal(before, snapshot(model))
    assert a.network is not model
    assert states_equal(snapshot(a.network), snapshot(b.network))
    assert not states_equal(snapshot(a.network), snapshot(c.network))
    assert not states_equal(snapshot(a.network), before)
    hist = a.train.history
    assert len(hist) >= 1 and hist[0]["val_mean_dice"] is not None  # validated on held-out strokes
    assert 0 <= a.best_val_dice <= 1 and a.metrics["best_val_dice"] == pytest.approx(a.best_val_dice)
    counts = a.annotation_counts
    assert counts["images"] == 2 and counts["validation_pixels"] > 0
    assert counts["training_pixels"] + counts["validation_pixels"] == counts["annotated_pixels"]
    assert counts["annotated_pixels"] == sum(int((s > 0).sum()) for _, s in pairs)


def test_fine_tune_early_stop_and_no_validation():
    pairs, _ = small_pairs()
    r = fine_tune(net(1, features=(4, 8)), pairs, small_config(epochs=30, early_stop_patience=1, lr=0.0), seed=0)
    assert r.early_stopped and r.train.epochs_done == 2  # lr 0: never improves after the first validation
    r = fine_tune(net(1, features=(4, 8)), pairs, small_config(epochs=1), validation_fraction=0.0, seed=0)
    assert r.annotation_counts["validation_pixels"] == 0 and r.train.history[0]["val_mean_dice"] is None


def test_fine_tune_cancel_and_error_change_nothing():
    pairs, _ = small_pairs(1)
    model = net(2, features=(4, 8))
    before = snapshot(model)
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 2

    r = fine_tune(model, pairs, small_config(), should_stop=stop, seed=0)
    assert r.stopped and states_equal(before, snapshot(model))
    calls.clear()
    with pytest.raises(JobCancelled):
        fine_tune(model, pairs, small_config(), should_stop=stop, seed=0, raise_on_stop=True)
    assert states_equal(before, snapshot(model))
    bad = np.zeros_like(pairs[0][1])
    with pytest.raises(AnnotationError):
        fine_tune(model, [(pairs[0][0], bad)], small_config(), seed=0)
    with pytest.raises(AnnotationError):
        fine_tune(model, [(pairs[0][0], pairs[0][1][:-1])], small_config(), seed=0)
    assert states_equal(before, snapshot(model))


def test_fine_tune_accepts_a_config_and_reports_progress():
    pairs, _ = small_pairs(1)
    seen = []
    config = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, num_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning per unannotated patch
        r = fine_tune(net(3, features=(4, 8)), pairs, config, mode="instance", seed=1,
                      progress=lambda done, total, info: seen.append((done, total)))
    assert r.metrics["steps_done"] == 2 and seen[-1][0] == 2 and r.metrics["mode"] == "instance"


def test_anchored_loss_pulls_unannotated_confident_pixels_to_the_parent():
    import torch

    from medloop.plugins.correction.retrain import AnchoredLoss, InputStash

    torch.manual_seed(0)
    parent = torch.nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        parent.weight[:] = torch.tensor([[[[10.0]]], [[[-10.0]]]])  # confident where |x| is large
        parent.bias.zero_()
    stash = InputStash()
    x = torch.tensor([[[[1.0, -1.0, 0.01, 2.0]]]])  # pixel 2: the parent is unsure (p ~ 0.6)
    student = torch.nn.Conv2d(1, 2, 1)
    stash.attach(student)
    logits = student(x)
    target = torch.tensor([[[2, 0, 0, 0]]])  # pixel 0 annotated (class 1), the rest not
    weight = (target > 0).float()
    loss = AnchoredLoss(lambda lg, t, w: lg.sum() * 0, parent, stash, weight=0.5, confidence=0.9)
    value = loss(logits, target, weight)
    soft = torch.softmax(parent(x), 1)
    ce = -(soft * torch.log_softmax(logits, 1)).sum(1)[0, 0]
    expected = 0.5 * (ce[1] + ce[3]) / 3  # unannotated: pixels 1-3; confident: 1 and 3
    assert torch.allclose(value, expected, atol=1e-6)
    value.backward()


def test_fine_tune_with_anchor_returns_a_hook_free_copy(tmp_path):
    import torch

    from medloop.plugins.correction.retrain import default_fine_tune_config, fine_tune
    from medloop.models.nets import build_network

    torch.manual_seed(0)
    net = build_network("unet2d", spatial_dims=2, in_channels=1, out_channels=2, features=[4, 8], norm="group")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
    s = np.zeros((32, 32), np.int64)
    s[2:6, 2:10], s[20:24, 20:30] = 1, 2
    result = fine_tune(net, [(x, s)], default_fine_tune_config(epochs=1, steps_per_epoch=3), anchor=0.5, validation_fraction=0)
    assert not result.network._forward_pre_hooks and not net._forward_pre_hooks
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert result.metrics["anchor"] == 0.5
