"""Boundary-loss fine-tuning (spec weak-supervision.md section 4): alpha ramp, exact loss value on
fully annotated tiles, stroke fallback with zero gradient on unannotated pixels, and a short
fine-tune on tiny blobs that measurably learns."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from medloop.app.errors import MedloopWarning
from medloop.app.engine.losses import (
    boundary_loss,
    generalised_dice_loss,
    probabilities,
    signed_distance_maps,
)
from medloop.plugins.correction.boundary_training import (
    BoundaryStrokeLoss,
    boundary_loss_fn,
)
from medloop.plugins.correction.retrain import default_fine_tune_config
from medloop.plugins.correction.sparse import sparse_loss

torch.set_num_threads(1)


def _dense_tiles(n: int, size: int = 16, k: int = 3, seed: int = 0) -> torch.Tensor:
    """Paint-convention maps with every pixel labelled: background 1, a disk 2, a square 3."""
    gen = np.random.default_rng(seed)
    yy, xx = np.indices((size, size))
    out = np.ones((n, size, size), np.int64)
    for i in range(n):
        cy, cx = gen.uniform(4, size - 4, 2)
        out[i][np.hypot(yy - cy, xx - cx) < 3] = 2
        if k > 2:
            y0, x0 = gen.integers(0, size - 4, 2)
            out[i, y0 : y0 + 3, x0 : x0 + 3] = 3
    return torch.from_numpy(out)


def _advance(loss: BoundaryStrokeLoss, steps: int) -> None:
    loss.steps += steps  # the schedule reads only the call count


# --- alpha schedule ------------------------------------------------------------------------------


def test_alpha_follows_the_scaled_ramp_and_reaches_the_floor_within_the_run():
    cfg = default_fine_tune_config(epochs=7, steps_per_epoch=3)
    loss = boundary_loss_fn(cfg, 2)
    step = 0.99 / 6  # (1 - floor) / (epochs - 1)
    for s in (0, 2, 3, 5, 9, 14, 17, 18, 20, 25):
        assert loss.alpha(s) == pytest.approx(max(0.01, 1 - step * (s // 3)), abs=1e-12)
    last_epoch_steps = range(6 * 3, 7 * 3)
    assert all(loss.alpha(s) == pytest.approx(0.01, abs=1e-12) for s in last_epoch_steps)
    assert loss.alpha(6 * 3 - 1) > 0.01 + 1e-3  # not before the last epoch
    # The call count drives it: each call uses the alpha of its own step.
    logits, target = torch.zeros(1, 2, 8, 8), torch.ones(1, 8, 8, dtype=torch.long)
    seen = []
    for _ in range(21):
        loss(logits, target, torch.ones(1, 8, 8))
        seen.append(loss.last_alpha)
    assert seen == [loss.alpha(s) for s in range(21)]
    assert loss.steps == 21


def test_a_100_epoch_run_is_the_papers_ramp():
    loss = boundary_loss_fn(default_fine_tune_config(epochs=100, steps_per_epoch=5), 2)
    for e in (0, 1, 37, 98, 99):
        assert loss.alpha(5 * e) == pytest.approx(max(0.01, 1 - 0.01 * e), abs=1e-12)


# --- loss values ---------------------------------------------------------------------------------


def test_fully_annotated_tiles_give_alpha_gd_plus_boundary_loss():
    torch.manual_seed(0)
    labels = _dense_tiles(3, k=3)
    logits = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    loss = boundary_loss_fn(default_fine_tune_config(epochs=5, steps_per_epoch=4), 3)
    _advance(loss, 9)  # epoch 2
    alpha = loss.alpha()
    assert 0.01 < alpha < 1
    value = loss(logits, labels, torch.ones(3, 16, 16))
    classes = labels - 1
    probs = probabilities(logits)
    phi = torch.from_numpy(signed_distance_maps(classes, 3)).to(probs)
    expected = alpha * generalised_dice_loss(logits, classes) + (1 - alpha) * boundary_loss(probs[:, 1:], phi)
    assert float(value) == pytest.approx(float(expected), abs=1e-6)
    assert (loss.boundary_tiles, loss.skipped_tiles) == (3, 0)
    assert float((phi * probs[:, 1:]).abs().sum()) > 0  # the boundary term is really in there


def test_partly_annotated_tile_skips_the_boundary_term_and_trains_on_strokes_only():
    torch.manual_seed(1)
    dense = _dense_tiles(1, k=2, seed=3)
    strokes = torch.zeros(16, 16, dtype=torch.long)
    strokes[2:4, 2:12] = 1  # a background stroke
    strokes[10:12, 9:13] = 2  # a foreground stroke
    target = torch.stack([dense[0], strokes, torch.zeros_like(strokes)])  # full, strokes, nothing
    weight = (target > 0).float()
    logits = torch.randn(3, 2, 16, 16, dtype=torch.float64, requires_grad=True)
    loss = boundary_loss_fn(default_fine_tune_config(epochs=4, steps_per_epoch=1), 2)
    _advance(loss, 2)
    alpha = loss.alpha()
    with pytest.warns(MedloopWarning, match="unannotated pixels"):
        value = loss(logits, target, weight)
    assert (loss.boundary_tiles, loss.skipped_tiles) == (1, 2)

    full = loss.full_tile_loss(logits[:1], target[:1] - 1, alpha)
    expected = (full + sparse_loss(logits[1:2], target[1:2], "mini-batch")) / 2
    assert float(value.detach()) == pytest.approx(float(expected.detach()), abs=1e-9)

    value.backward()
    grad = logits.grad
    unannotated = (target == 0).unsqueeze(1).expand_as(grad)
    assert torch.count_nonzero(grad[unannotated]) == 0  # exactly zero, every class channel
    assert torch.count_nonzero(grad[2]) == 0  # the empty tile teaches nothing
    assert torch.count_nonzero(grad[1][(target[1] > 0).unsqueeze(0).expand(2, -1, -1)]) > 0
    assert torch.count_nonzero(grad[0]) > 0

    # Whatever the unannotated pixels predict or carry as target, the loss is the same.
    other = logits.detach().clone()
    other[unannotated] = 50.0 * torch.randn(int(unannotated.sum()), dtype=torch.float64)
    loss2 = boundary_loss_fn(default_fine_tune_config(epochs=4, steps_per_epoch=1), 2)
    _advance(loss2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = loss2(other, torch.where(weight > 0, target, torch.full_like(target, 2)), weight)
    assert float(again) == pytest.approx(float(value.detach()), abs=1e-12)


def test_the_skip_warning_comes_once_and_the_count_keeps_growing():
    loss = boundary_loss_fn(default_fine_tune_config(epochs=2, steps_per_epoch=2), 2)
    target = torch.ones(2, 8, 8, dtype=torch.long)
    target[1, 0, 0] = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            loss(torch.zeros(2, 2, 8, 8), target, (target > 0).float())
    assert sum(issubclass(w.category, MedloopWarning) for w in caught) == 1
    assert loss.skipped_tiles == 3 and loss.boundary_tiles == 3


def test_wrong_class_count_is_refused():
    loss = boundary_loss_fn(default_fine_tune_config(), 3)
    with pytest.raises(ValueError, match="3"):
        loss(torch.zeros(1, 2, 8, 8), torch.ones(1, 8, 8, dtype=torch.long), torch.ones(1, 8, 8))


# --- training ------------------------------------------------------------------------------------


def _tiny_unet():
    from medloop.models.nets import build_network

    return build_network(
        "unet2d", spatial_dims=2, in_channels=1, out_channels=2, features=[8, 16, 32], norm="group", up="bilinear"
    )


def _fg_dice(net, samples) -> float:
    from medloop.app.engine.metrics import dice_per_class
    from medloop.app.engine.train import predict_whole

    net.eval()
    with torch.inference_mode():
        preds = [predict_whole(net, s.image, int(getattr(net, "divisible_by", 1) or 1))[0] for s in samples]
    truth = np.concatenate([s.semantic.ravel() for s in samples])
    return float(dice_per_class(np.concatenate([p.ravel() for p in preds]), truth, 2, True)[1])


def test_short_fine_tune_with_boundary_loss_learns_tiny_blobs():
    """Measured (seed 0, 100 steps, 1 thread, ~7 s): foreground Dice 0.001 -> 0.85 on 16 test images."""
    from medloop.plugins.correction.retrain import fine_tune
    from medloop.plugins.correction.synth import dataset

    train, test = dataset("tiny_blobs", 16, seed=1), dataset("tiny_blobs", 16, seed=2)
    torch.manual_seed(0)
    start = _tiny_unet()
    before = _fg_dice(start, test)
    cfg = default_fine_tune_config(epochs=10, steps_per_epoch=10, batch_size=8, early_stop_patience=None)
    loss = boundary_loss_fn(cfg, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MedloopWarning)  # empty images: "only class 1 is annotated"
        result = fine_tune(start, [(s.image, s.semantic + 1) for s in train], cfg, validation_fraction=0, seed=0, loss_fn=loss)
    after = _fg_dice(result.network, test)
    assert loss.steps == 100 and loss.skipped_tiles == 0 and loss.boundary_tiles == 800
    assert loss.last_alpha == pytest.approx(0.01)
    assert before < 0.05
    assert after > before + 0.5, (before, after)


def test_run_weak_strokes_with_boundary_uses_this_loss(monkeypatch):
    """The headless path builds the loss from its TrainConfig and trains on strokes through it."""
    from medloop.plugins.correction import boundary_training
    from medloop.plugins.correction.headless import run_weak
    from medloop.plugins.correction.synth import dataset
    from medloop.plugins.correction.weaklabels import strokes

    made: list[BoundaryStrokeLoss] = []

    def spy(config, num_classes, *args, **kwargs):
        made.append(boundary_loss_fn(config, num_classes, *args, **kwargs))
        return made[-1]

    monkeypatch.setattr(boundary_training, "boundary_loss_fn", spy)
    sample = dataset("tiny_blobs", 1, seed=5)[0]
    s, _ = strokes(sample.semantic, coverage=0.05, margin=1, rng=0)
    torch.manual_seed(0)
    cfg = default_fine_tune_config(epochs=2, steps_per_epoch=3, batch_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MedloopWarning)
        run = run_weak("strokes", sample.image, s, _tiny_unet(), config=cfg, boundary=True)
    assert len(made) == 1 and made[0].steps == 6
    assert made[0].skipped_tiles == 12 and made[0].boundary_tiles == 0  # strokes never fill a tile
    assert run.network is not None
