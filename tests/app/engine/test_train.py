"""The training loop on a tiny synthetic task: learning, exact resume, stopping, weight maps."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from medloop.app.engine.augment import AugmentConfig
from medloop.app.engine.jobs import JobCancelled
from medloop.app.engine.train import (
    TrainConfig,
    load_checkpoint,
    train_segmentation,
)
from medloop.app.errors import ImageMismatchError, MedloopError
from medloop.app.engine.losses import weighted_cross_entropy  # moved from medloop.app.engine.train

torch.set_num_threads(1)


class TinyNet(nn.Module):
    """Two-level conv net (GroupNorm, as the spec asks), 2-D or 3-D."""

    divisible_by = 2

    def __init__(self, in_channels: int = 1, classes: int = 2, width: int = 8, dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        self.enc1 = nn.Sequential(conv(in_channels, width, 3, padding=1), nn.GroupNorm(2, width), nn.ReLU())
        self.enc2 = nn.Sequential(pool(2), conv(width, 2 * width, 3, padding=1), nn.GroupNorm(2, 2 * width), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2, mode="bilinear" if dims == 2 else "trilinear", align_corners=False)
        self.dec = nn.Sequential(conv(3 * width, width, 3, padding=1), nn.ReLU(), conv(width, classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.enc1(x)
        return self.dec(torch.cat([a, self.up(self.enc2(a))], 1))


def disks(n: int, seed: int, size: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
    """Bright disks (label 1) on noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    pairs = []
    for _ in range(n):
        lab = np.zeros((size, size), np.int64)
        for _ in range(int(rng.integers(1, 3))):
            cy, cx = rng.uniform(6, size - 6, 2)
            r = rng.uniform(3, 7)
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        img = (lab + rng.normal(0, 0.4, lab.shape)).astype(np.float32)[None]
        pairs.append((img, lab))
    return pairs


TRAIN = disks(16, 1)
VAL = disks(4, 2)
FAST = TrainConfig(
    epochs=4, steps_per_epoch=3, batch_size=4, patch_size=(32, 32), lr=1e-2, device="cpu", num_threads=1,
    augment=AugmentConfig(rotate_any_2d=True),
)


def net(seed: int = 0, **kwargs) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(**kwargs)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_learns_disks_to_dice_090_and_loss_decreases():
    cfg = replace(FAST, epochs=6, steps_per_epoch=10, batch_size=8, schedule="cosine")
    t = time.perf_counter()
    result = train_segmentation(net(), TRAIN, VAL, cfg)
    seconds = time.perf_counter() - t
    print(f"\n60 steps of 8 x 32^2 + 6 validations: {seconds:.1f} s; best Dice {result.best_val_dice:.3f}")
    assert result.best_val_dice >= 0.9
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert len(result.history) == 6 and result.epochs_done == 6 and result.steps_done == 60
    assert set(result.history[0]) >= {"train_loss", "val_dice", "lr", "seconds"}
    assert result.history[-1]["lr"] < 0.05 * cfg.lr  # cosine went down
    # The model holds the best weights.
    assert states_equal({k: v for k, v in result.model.state_dict().items()}, result.best_state)
    assert seconds < 60  # "a few seconds" on an idle core; generous for the shared box


def test_same_seed_same_weights():
    a = train_segmentation(net(), TRAIN, VAL, replace(FAST, epochs=2))
    b = train_segmentation(net(), TRAIN, VAL, replace(FAST, epochs=2))
    c = train_segmentation(net(), TRAIN, VAL, replace(FAST, epochs=2, seed=1))
    assert states_equal(a.model.state_dict(), b.model.state_dict())
    assert not states_equal(a.model.state_dict(), c.model.state_dict())


def test_resume_equals_uninterrupted(tmp_path):
    straight_ck = tmp_path / "straight.pt"
    straight = train_segmentation(net(), TRAIN, VAL, FAST, checkpoint_path=straight_ck)

    # 2 epochs, stop, then resume to 4 (constant schedule: the epoch count changes nothing else).
    ck = tmp_path / "resumed.pt"
    first = train_segmentation(net(), TRAIN, VAL, replace(FAST, epochs=2), checkpoint_path=ck)
    assert first.epochs_done == 2 and load_checkpoint(ck)["epoch"] == 2
    resumed = train_segmentation(net(seed=99), TRAIN, VAL, FAST, checkpoint_path=ck, resume=True)

    assert resumed.epochs_done == 4 and len(resumed.history) == 4
    assert states_equal(load_checkpoint(straight_ck)["model"], load_checkpoint(ck)["model"])  # last weights
    assert states_equal(straight.best_state, resumed.best_state)
    assert straight.best_epoch == resumed.best_epoch
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]


def test_resume_after_stop_mid_epoch_with_cosine(tmp_path):
    cfg = replace(FAST, schedule="cosine")
    straight = train_segmentation(net(), TRAIN, VAL, cfg)
    ck = tmp_path / "ck.pt"
    steps = []

    def progress(done, total, info):
        if info["event"] == "step":
            steps.append(done)

    stopped = train_segmentation(
        net(), TRAIN, VAL, cfg, progress=progress, should_stop=lambda: len(steps) >= 7, checkpoint_path=ck
    )
    assert stopped.stopped and stopped.steps_done == 7 and load_checkpoint(ck)["epoch"] == 2
    resumed = train_segmentation(net(), TRAIN, VAL, cfg, checkpoint_path=ck, resume=True)
    assert states_equal(straight.best_state, resumed.best_state)
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())


def test_should_stop_after_n_steps_exactly():
    calls = {"steps": 0, "epochs": 0}

    def progress(done, total, info):
        calls["steps" if info["event"] == "step" else "epochs"] += 1
        assert total == FAST.epochs * FAST.steps_per_epoch

    model = net()
    result = train_segmentation(model, TRAIN, VAL, FAST, progress=progress, should_stop=lambda: calls["steps"] >= 5)
    assert result.stopped and not result.early_stopped
    assert calls["steps"] == 5 and result.steps_done == 5 and result.epochs_done == 1
    assert result.best_epoch == 1  # epoch 1 was validated; the model holds those weights
    assert states_equal(model.state_dict(), result.best_state)


def test_stop_can_raise_and_copy_leaves_model_untouched():
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(JobCancelled):
        train_segmentation(model, TRAIN, VAL, FAST, should_stop=lambda: True, raise_on_stop=True, copy_model=True)
    assert states_equal(model.state_dict(), before)
    result = train_segmentation(model, TRAIN, VAL, replace(FAST, epochs=1), copy_model=True)
    assert result.model is not model and states_equal(model.state_dict(), before)
    assert not states_equal(result.model.state_dict(), before)


def test_zero_weight_gives_no_gradient():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    weight = torch.ones(2, 8, 8)
    weight[..., :4] = 0
    weighted_cross_entropy(logits, target, weight).backward()
    assert torch.all(logits.grad[..., :4] == 0)
    assert torch.all(logits.grad[..., 4:].abs().sum(1) > 0)


def test_labels_under_zero_weight_change_nothing():
    """Train twice: labels differ only where the weight is 0 -> identical weights."""
    rng = np.random.default_rng(7)
    weight = np.ones((32, 32), np.float32)
    weight[:, 16:] = 0
    real = [(img, lab, weight) for img, lab in TRAIN]
    garbage = [(img, np.where(weight > 0, lab, rng.integers(0, 2, lab.shape)), weight) for img, lab in TRAIN]
    cfg = replace(FAST, epochs=2)
    a = train_segmentation(net(), real, None, cfg)
    b = train_segmentation(net(), garbage, None, cfg)
    assert states_equal(a.model.state_dict(), b.model.state_dict())
    # and the labels in the weighted half do matter
    flipped = [(img, np.where(weight > 0, 1 - lab, lab), weight) for img, lab in TRAIN]
    c = train_segmentation(net(), flipped, None, cfg)
    assert not states_equal(a.model.state_dict(), c.model.state_dict())


def test_predict_val_and_early_stopping():
    seen = []

    def predict_val(model, image):
        seen.append(image.shape)
        return np.zeros(image.shape[1:], np.int64)  # never improves

    cfg = replace(FAST, epochs=10, steps_per_epoch=1, early_stop_patience=2, num_classes=2)
    result = train_segmentation(net(), TRAIN, VAL, cfg, predict_val=predict_val)
    assert result.early_stopped and result.epochs_done == 3 and result.best_epoch == 1
    assert len(seen) == 3 * len(VAL)
    assert result.history[0]["val_dice"] == {1: 0.0}


def test_val_every_and_plateau_schedule():
    cfg = replace(FAST, epochs=4, steps_per_epoch=1, val_every=2, schedule="plateau")
    result = train_segmentation(net(), TRAIN, VAL, cfg)
    assert [h["val_dice"] is not None for h in result.history] == [False, True, False, True]


def test_threads_and_global_rng_restored():
    torch.set_num_threads(2)
    try:
        state = torch.get_rng_state()
        train_segmentation(net(), TRAIN, None, replace(FAST, epochs=1, num_threads=1))
        assert torch.get_num_threads() == 2
        assert torch.equal(state, torch.get_rng_state())
    finally:
        torch.set_num_threads(1)


def test_two_argument_progress_and_3d():
    rng = np.random.default_rng(0)
    lab = np.zeros((12, 12, 12), np.int64)
    lab[3:8, 4:9, 2:7] = 1
    pair = ((lab + rng.normal(0, 0.3, lab.shape)).astype(np.float32)[None], lab)
    ticks = []
    cfg = replace(FAST, epochs=1, steps_per_epoch=2, batch_size=2, patch_size=(8, 8, 8), augment=AugmentConfig())
    result = train_segmentation(net(dims=3), [pair], [pair], cfg, progress=lambda d, t: ticks.append((d, t)))
    assert ticks == [(1, 2), (2, 2), (2, 2)]  # two steps, one epoch end
    assert set(result.history[0]["val_dice"]) == {1}


def test_bad_input_is_a_medloop_error():
    img, lab = TRAIN[0]
    with pytest.raises(ImageMismatchError):
        train_segmentation(net(), [(img, lab[:-1])], None, FAST)
    with pytest.raises(MedloopError, match="schedule"):
        train_segmentation(net(), TRAIN, None, replace(FAST, schedule="linear"))
    with pytest.raises(MedloopError, match="multiples of 2"):
        train_segmentation(net(), TRAIN, None, replace(FAST, patch_size=(15, 16)))
    with pytest.raises(MedloopError, match="no training data"):
        train_segmentation(net(), [], None, FAST)


def test_freeze_norm_stats_keeps_batchnorm_statistics():
    """Fine-tuning with ``freeze_norm_stats``: BatchNorm running statistics stay exactly as the
    training run left them while the weights learn; without it they move."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    model[1].running_mean.fill_(0.25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = replace(FAST, epochs=1, augment=None)
    frozen = train_segmentation(model, TRAIN, None, replace(cfg, freeze_norm_stats=True), copy_model=True).model
    assert torch.equal(frozen[1].running_mean, before["1.running_mean"])
    assert torch.equal(frozen[1].running_var, before["1.running_var"])
    assert not torch.equal(frozen[0].weight, before["0.weight"])
    moving = train_segmentation(model, TRAIN, None, cfg, copy_model=True).model
    assert float((moving[1].running_mean - 0.25).abs().max()) > 1e-3
