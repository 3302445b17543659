"""Baur et al.'s autoencoder anomaly maps (spec §3): the deterministic checks and a small trained AE."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.plugins.lesions.anomaly import AnomalyConfig, SpatialAutoencoder, reconstruct, train_autoencoder
from medloop.plugins.lesions.anomaly_training import brain_sets, evaluate_anomaly, train_anomaly_recipe
from medloop.plugins.lesions.checks import LesionInputError
from medloop.plugins.lesions.residual import anomaly_map, calibrate_threshold, residual_map, threshold_map

# Small: 200 healthy slices, 250 steps (about 15 s on one idle core). A 16-channel first layer fits
# the phantoms better in few steps than the preset's 8 (whole-image MAE 0.023 vs 0.033 at 400 steps).
SMALL = AnomalyConfig(channels=(16, 16, 16), epochs=5, steps_per_epoch=50, lr=4e-3, gdl_weight=1.0, seed=0)


@pytest.fixture(scope="module")
def trained():
    import torch

    torch.set_num_threads(1)
    sets = brain_sets(seed=0, n_healthy=200, n_val=30, n_test=40)
    result = train_autoencoder(sets.healthy, SMALL)
    return result, sets, evaluate_anomaly(result.model, sets)


def test_trained_ae_detects_phantom_lesions(trained):
    result, sets, metrics = trained
    assert metrics["healthy_mae"] < 0.03
    assert metrics["uad_dice"] >= 0.50
    assert metrics["uad_auprc"] >= 0.55
    assert 0.0 < metrics["threshold"] < 1.0
    assert result.steps_done == 250


def test_gdl_weight_is_zero_during_warmup(trained):
    result, _, _ = trained
    weights = [record["train_gdl_weight"] for record in result.history]
    # 20 % of 5 epochs of 50 steps: the first 50 steps (epoch 1 whole) run without GDL.
    assert weights == [0.0, 1.0, 1.0, 1.0, 1.0]


def test_dark_blob_is_never_detected(trained):
    result, sets, metrics = trained
    t = metrics["threshold"]
    phantom = sets.test[0]
    from scipy.ndimage import binary_dilation

    blob = binary_dilation(phantom.lesion, iterations=1) & phantom.anatomy  # a white-matter site
    dark = np.where(blob, phantom.healthy - 0.3, phantom.healthy).clip(0, 1).astype(np.float32)
    bright = np.where(blob, phantom.healthy + 0.3, phantom.healthy).clip(0, 1).astype(np.float32)
    r_dark = anomaly_map(result.model, dark, phantom.anatomy)
    r_bright = anomaly_map(result.model, bright, phantom.anatomy)
    r_healthy = anomaly_map(result.model, phantom.healthy, phantom.anatomy)
    # At the calibrated t no pixel of the dark blob is labelled (the autoencoder's blur can leave
    # a faint bright rim around it: at most a pixel or two, measured 1); the same blob made bright is found.
    assert int(threshold_map(r_dark, t)[blob].sum()) == 0 and int(threshold_map(r_healthy, t).sum()) == 0
    assert int(threshold_map(r_dark, t).sum()) <= 2
    assert threshold_map(r_bright, t)[blob].mean() > 0.5


def test_median_removes_a_spike_but_keeps_a_5x5_blob():
    x = np.full((32, 32), 0.5, np.float32)
    x[5, 5] = 1.0  # isolated spike
    x[20:25, 20:25] = 0.9  # 5 x 5 blob
    r = residual_map(x, np.full_like(x, 0.5))
    assert r[5, 5] == 0.0 and r[3:8, 3:8].max() == 0.0
    assert r[22, 22] == pytest.approx(0.4) and int((r > 0.3).sum()) >= 9
    # A negative residual is clamped before the median.
    assert residual_map(np.full_like(x, 0.2), np.full_like(x, 0.5), np.ones_like(x)).max() == 0.0


def test_median_over_a_stack_uses_5x5x5():
    stack = np.full((5, 16, 16), 0.5, np.float32)
    stack[2, 5:10, 5:10] = 0.9  # a 5 x 5 blob on one slice only: not 3-D enough for 5 x 5 x 5
    recon = np.full_like(stack, 0.5)
    assert residual_map(stack, recon, median=5).max() == 0.0
    assert residual_map(stack, recon, median=(5, 5))[2, 7, 7] == pytest.approx(0.4)


def test_zero_outside_the_brain_mask():
    x = np.full((16, 16), 0.9, np.float32)
    mask = np.zeros((16, 16), bool)
    mask[4:12, 4:12] = True
    r = residual_map(x, np.full_like(x, 0.5), mask, median=1)
    assert r[~mask].max() == 0.0 and r[mask].min() == pytest.approx(0.4)


def test_error_messages():
    model = SpatialAutoencoder()
    with pytest.raises(LesionInputError) as err:
        anomaly_map(model, np.full((16, 16), 200.0, np.float32), name="flair")
    assert str(err.value) == (
        "flair has values in [200, 200] but the anomaly model expects an image scaled to [0, 1]; "
        "normalise it first (e.g. divide by its 99.5th percentile)")
    with pytest.raises(LesionInputError) as err:
        residual_map(np.zeros((16, 16), np.float32), np.zeros((16, 16), np.float32), name="flair")
    assert str(err.value) == "brain mask of flair is empty; draw or compute a mask that covers the anatomy"
    with pytest.raises(LesionInputError) as err:
        residual_map(np.ones((1, 16, 16), np.float32), np.ones((1, 16, 16), np.float32), median=5, name="flair")
    assert str(err.value) == (
        "a 5x5x5 median runs over a stack of slices, but flair is a single slice (1, 16, 16); "
        "use median=5 (per slice) or give the whole stack")
    with pytest.raises(LesionInputError) as err:
        residual_map(np.ones((16, 16), np.float32), np.ones((16, 16), np.float32), median=(5, 5, 5), name="flair")
    assert "is a single slice (16, 16)" in str(err.value)
    with pytest.raises(LesionInputError) as err:
        threshold_map(np.zeros((4, 4)), 1.5)
    assert str(err.value) == "threshold t = 1.5 is outside [0, 1]; choose a value in [0, 1]"


def test_calibration_returns_the_dice_maximising_threshold():
    truth = np.zeros((10, 10), bool)
    truth[2:6, 2:6] = True  # 16 lesion pixels at r = 0.5
    r = np.zeros((10, 10), np.float32)
    r[truth] = 0.5
    r[8, :] = 0.3  # 10 false positives at 0.3, 4 more at 0.7 beside 4 lesion pixels at 0.7
    r[0, :4] = 0.7
    r[2, 2:6] = 0.7
    grid = [0.2, 0.4, 0.6, 0.8]
    t, best = calibrate_threshold([r], [truth], grid)
    # t=0.2: 2*16/(30+16); t=0.4: 2*16/(20+16); t=0.6: 2*4/(8+16); t=0.8: 0.
    assert t == 0.4 and best == pytest.approx(32 / 36)
    t_fine, _ = calibrate_threshold([r], [truth])
    assert 0.3 < t_fine <= 0.5


def test_reconstruct_pads_odd_sizes_and_keeps_stacks():
    model = SpatialAutoencoder()
    image = np.random.default_rng(0).random((37, 50), dtype=np.float32)
    assert reconstruct(model, image).shape == (37, 50)
    out = reconstruct(model, np.stack([image, image]))
    assert out.shape == (2, 37, 50) and np.array_equal(out[0], out[1])
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_recipe_writes_weights_and_card_fields(tmp_path):
    import torch

    raw = {"name": "lesion-anomaly-brain", "kind": "anomaly",
           "data": {"seed": 1, "healthy": 32, "validation": 6, "test": 6, "shape": [64, 64]},
           "train": {"epochs": 2, "steps_per_epoch": 3, "batch": 4}}
    card = train_anomaly_recipe(raw, tmp_path)
    state = torch.load(card["files"]["weights"], weights_only=True)
    assert set(state) == {f"autoencoder.{k}" for k in SpatialAutoencoder().state_dict()}
    assert card["steps"] == 6 and card["threshold"] == card["metrics"]["threshold"]
    assert card["architecture"] == {"name": "medloop.plugins.lesions.anomaly:SpatialAutoencoder",
                                    "kwargs": {"width": 8, "channels": [8, 16, 16]}}
    sample = np.load(card["files"]["test_data"])
    assert sample["input"].shape == sample["output"].shape == (64, 64)
    with pytest.raises(LesionInputError, match=r"\['epoch'\] are unknown"):
        train_anomaly_recipe({**raw, "train": {"epoch": 2}}, tmp_path)
