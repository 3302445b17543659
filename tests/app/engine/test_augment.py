"""Augmentation: alignment of image and label, label sets, ranges, resolution, reproducibility."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from medloop.app.engine.augment import (
    AugmentConfig,
    augment,
    bias_field,
    random_augmented_patch,
    random_patch,
    resample_resolution,
)

torch.set_num_threads(1)

GEOMETRY_ONLY = replace(AugmentConfig.none(), p_flip=0.5, p_rotate=1.0, p_scale=1.0, p_elastic=1.0)


def blocks(shape: tuple[int, ...], seed: int = 0, values: tuple[int, ...] = (0, 1)) -> np.ndarray:
    """A label map of random axis-aligned blocks (large flat regions with sharp edges)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int64)
    for _ in range(6):
        lo = [int(rng.integers(0, n - 4)) for n in shape]
        hi = [int(rng.integers(l + 3, n + 1)) for l, n in zip(lo, shape)]
        lab[tuple(slice(a, b) for a, b in zip(lo, hi))] = values[int(rng.integers(1, len(values)))]
    return lab


def test_nothing_enabled_is_identity():
    lab = blocks((20, 24))
    img = np.random.default_rng(1).standard_normal((2, 20, 24)).astype(np.float32)
    out = augment(img, lab, AugmentConfig.none(), np.random.default_rng(0))
    assert np.array_equal(out.image, img) and np.array_equal(out.label, lab)
    assert out.weight.dtype == np.float32 and np.all(out.weight == 1)


def test_flips_alone_are_exact():
    lab = blocks((12, 14, 16))
    img = lab[None].astype(np.float32)
    cfg = replace(AugmentConfig.none(), p_flip=1.0)
    out = augment(img, lab, cfg, np.random.default_rng(0))
    assert np.array_equal(out.label, lab[::-1, ::-1, ::-1])
    assert np.array_equal(out.image[0], out.label.astype(np.float32))


@pytest.mark.parametrize("shape", [(48, 48), (24, 28, 32)])
def test_geometry_keeps_image_and_label_aligned(shape):
    """An image equal to its own label must still coincide with the label after warping."""
    for seed in range(4):
        lab = blocks(shape, seed)
        img = lab[None].astype(np.float32)
        cfg = replace(GEOMETRY_ONLY, rotate_any_2d=True)
        out = augment(img, lab, cfg, np.random.default_rng(seed))
        inside = out.weight > 0
        assert inside.mean() > 0.5
        agree = np.round(out.image[0]) == out.label
        # Only voxels on block edges may differ (linear vs nearest); a shift or flip would not.
        assert agree[inside].mean() > 0.95
        # Foreground centroids coincide to a fraction of a voxel.
        c_img = np.array(np.nonzero(out.image[0] * inside > 0.5)).mean(axis=1)
        c_lab = np.array(np.nonzero(out.label * inside)).mean(axis=1)
        assert np.abs(c_img - c_lab).max() < 0.5
        # The warp really changed something.
        assert not np.array_equal(out.label, lab)


def test_labels_stay_in_original_set_and_dtype():
    lab = blocks((20, 22, 18), 2, values=(0, 3, 7)).astype(np.int32)
    img = np.random.default_rng(0).standard_normal((1,) + lab.shape).astype(np.float32)
    cfg = replace(AugmentConfig(), p_rotate=1.0, p_scale=1.0, p_elastic=1.0)
    for seed in range(3):
        out = augment(img, lab, cfg, np.random.default_rng(seed))
        assert out.label.dtype == np.int32
        assert set(np.unique(out.label)) <= {0, 3, 7}


def test_weight_follows_geometry_and_is_zero_outside():
    lab = np.ones((32, 32), np.int64)
    lab[:, 16:] = 2  # no 0 in the input: a 0 in the output means "outside the volume"
    weight = np.where(lab == 1, 1.0, 0.5).astype(np.float32)
    img = lab[None].astype(np.float32)
    cfg = replace(GEOMETRY_ONLY, rotate_any_2d=True)
    for seed in range(3):
        out = augment(img, lab, cfg, np.random.default_rng(seed), weight=weight)
        assert (out.label == 0).any()  # rotated corners left the volume
        expected = np.select([out.label == 1, out.label == 2], [1.0, 0.5], 0.0)
        assert np.array_equal(out.weight, expected)  # same nearest sampling as the label


def test_bias_field_range():
    rng = np.random.default_rng(0)
    for order in (1, 3):
        f = bias_field((20, 30, 25), order, 0.3, rng)
        assert np.abs(f).max() == pytest.approx(0.3, rel=1e-5)
    img = np.ones((1, 24, 24, 24), np.float32)
    lab = np.zeros((24, 24, 24), np.int64)
    cfg = replace(AugmentConfig.none(), p_bias=1.0, bias_max=0.3)
    spreads = []
    for seed in range(10):
        out = augment(img, lab, cfg, np.random.default_rng(seed)).image
        assert out.min() >= 0.7 - 1e-6 and out.max() <= 1.3 + 1e-6
        spreads.append(np.abs(out - 1).max())
    assert max(spreads) > 0.15  # the field does vary, up to near its bound


def high_frequency_fraction(img: np.ndarray, axis: int) -> float:
    """Share of the power spectrum along ``axis`` above half the Nyquist frequency."""
    power = np.abs(np.fft.rfft(img, axis=axis)) ** 2
    power = np.moveaxis(power, axis, 0).reshape(power.shape[axis], -1).sum(axis=1)[1:]
    return float(power[len(power) // 2 :].sum() / power.sum())


def test_thick_slices_remove_high_frequencies_along_that_axis_only():
    img = np.random.default_rng(0).standard_normal((1, 32, 32, 32)).astype(np.float32)
    lab = np.zeros((32, 32, 32), np.int64)
    cfg = replace(AugmentConfig.none(), p_thick_slices=1.0, thick_slice_range=(3.0, 3.0), thick_slice_axis=0)
    out = augment(img, lab, cfg, np.random.default_rng(0)).image[0]
    before = [high_frequency_fraction(img[0], a) for a in range(3)]
    after = [high_frequency_fraction(out, a) for a in range(3)]
    assert after[0] < 0.3 * before[0]
    assert after[1] == pytest.approx(before[1], abs=0.03)
    assert after[2] == pytest.approx(before[2], abs=0.03)
    # A pattern constant along z passes through untouched.
    flat_z = np.broadcast_to(img[:, :1], img.shape).copy()
    out_flat = augment(flat_z, lab, cfg, np.random.default_rng(0)).image
    np.testing.assert_allclose(out_flat, flat_z, atol=1e-5)


def test_resolution_factors_per_axis_2d():
    rng = np.random.default_rng(1)
    along_x = np.broadcast_to(rng.standard_normal((1, 1, 64)), (1, 64, 64)).astype(np.float32)
    along_y = np.ascontiguousarray(along_x.transpose(0, 2, 1))
    factors = (1.0, 2.0)  # coarser x only
    out_x = resample_resolution(torch.from_numpy(along_x), factors).numpy()
    out_y = resample_resolution(torch.from_numpy(along_y), factors).numpy()
    assert high_frequency_fraction(out_x[0], 1) < 0.5 * high_frequency_fraction(along_x[0], 1)
    np.testing.assert_allclose(out_y, along_y, atol=1e-5)  # a pattern along y is untouched
    finer = torch.from_numpy(along_x)
    assert np.array_equal(resample_resolution(finer, (0.6, 1.0)).numpy(), along_x)  # finer: unchanged


def test_same_seed_same_output_and_seeds_differ():
    lab = blocks((24, 24, 24), 1)
    img = np.random.default_rng(0).standard_normal((2,) + lab.shape).astype(np.float32)
    cfg = AugmentConfig(p_rotate=0.8, p_elastic=0.8, p_noise=0.8, p_bias=0.8, p_resolution=0.8)
    a = augment(img, lab, cfg, np.random.default_rng(42))
    b = augment(img, lab, cfg, np.random.default_rng(42))
    c = augment(img, lab, cfg, np.random.default_rng(43))
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert not np.array_equal(a.image, c.image)


def test_random_patch_prefers_foreground_and_pads():
    lab = np.zeros((40, 50), np.int64)
    lab[30, 40] = 2
    img = np.arange(40 * 50, dtype=np.float32).reshape(1, 40, 50)
    rng = np.random.default_rng(0)
    for _ in range(5):
        s = random_patch(img, lab, (8, 8), rng, foreground_fraction=1.0)
        assert (s.label == 2).sum() == 1 and s.label[4, 4] == 2  # centred on the only foreground voxel
        assert np.array_equal(s.image[0], img[0, 26:34, 36:44])
    # Volume smaller than the patch along one axis: padded, label 0 and weight 0 outside.
    small_img = np.ones((1, 6, 30), np.float32)
    small_lab = np.ones((6, 30), np.int64)
    s = random_patch(small_img, small_lab, (10, 10), rng, foreground_fraction=0.0)
    assert s.image.shape == (1, 10, 10) and s.label.shape == (10, 10)
    assert s.weight.sum() == 60 and s.label.sum() == 60
    assert np.all(s.image == 1)  # edge-replicated image


def test_augmented_patch_reads_context_from_the_volume():
    lab = blocks((40, 40, 40), 3)
    img = lab[None].astype(np.float32)
    cfg = replace(GEOMETRY_ONLY, p_rotate=1.0, rotate_deg=15.0)
    s = random_augmented_patch(img, lab, (16, 16, 16), np.random.default_rng(0), cfg, foreground_fraction=0.0)
    assert s.image.shape == (1, 16, 16, 16) and s.label.shape == (16, 16, 16)
    assert (np.round(s.image[0]) == s.label).mean() > 0.9


def test_timing_96_cubed():
    """Printed, not asserted (the box is shared): run pytest -s to see it."""
    rng = np.random.default_rng(0)
    img = rng.standard_normal((1, 96, 96, 96)).astype(np.float32)
    lab = (img[0] > 1).astype(np.int64)
    everything = AugmentConfig(**{name: 1.0 for name in AugmentConfig.__dataclass_fields__ if name.startswith("p_")})
    presets = (("all transforms", everything), ("strong", AugmentConfig.strong()), ("defaults", AugmentConfig()))
    for name, cfg in presets:
        augment(img, lab, cfg, rng)
        t = time.perf_counter()
        for _ in range(3):
            out = augment(img, lab, cfg, rng)
        per = (time.perf_counter() - t) / 3
        print(f"\naugment 96^3 ({name}, 1 thread): {per * 1000:.0f} ms per sample")
    assert out.image.shape == img.shape
