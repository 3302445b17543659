"""Spec §E check 2: the bilinear sampler and the views."""

from __future__ import annotations

import numpy as np

from medloop.plugins.axons.views import bilinear, coarse_view, fine_view, rasterise, sample, window_offsets


def _image(seed: int = 0, shape=(30, 40)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def test_integer_points_return_the_pixels_exactly():
    img = _image()
    rows, cols = np.mgrid[0:30, 0:40]
    got = sample(img, np.stack([rows, cols], axis=-1).astype(float))
    assert np.array_equal(got.astype(np.float32), img)


def test_half_pixel_shift_is_the_mean_of_the_neighbours():
    img = _image()
    assert abs(sample(img, np.array([4.5, 7.0])) - (img[4, 7] + img[5, 7]) / 2) < 1e-6
    assert abs(sample(img, np.array([4.0, 7.5])) - (img[4, 7] + img[4, 8]) / 2) < 1e-6
    centre = img[4:6, 7:9].mean()
    assert abs(sample(img, np.array([4.5, 7.5])) - centre) < 1e-6


def test_outside_is_zero_and_the_edge_fades():
    img = _image()
    for p in ([-1.0, 5.0], [5.0, -1.0], [30.0, 5.0], [5.0, 40.0], [-3.2, -7.9], [100.0, 100.0]):
        assert sample(img, np.array(p)) == 0.0
    assert abs(sample(img, np.array([-0.5, 5.0])) - img[0, 5] / 2) < 1e-6
    assert abs(sample(img, np.array([29.25, 39.0])) - 0.75 * img[29, 39]) < 1e-6


def test_batched_sampling_matches_one_image_at_a_time():
    imgs = np.stack([_image(i) for i in range(3)])
    pts = np.random.default_rng(9).uniform(-3, 42, size=(3, 50, 2))
    batched = bilinear(imgs, pts)
    single = np.stack([sample(imgs[i], pts[i]) for i in range(3)])
    assert np.array_equal(batched, single)


def test_fine_and_coarse_windows():
    img = _image(shape=(64, 64))
    pos = np.array([[20.3, 31.7]])
    fine = fine_view(img[None], pos)[0]
    coarse = coarse_view(img[None], pos)[0]
    assert fine.shape == coarse.shape == (11, 11)
    # fine: every 1 px over 11 px; coarse: every 2 px over 21 px (-10 ... +10)
    axis = np.arange(-5, 6)
    expect_fine = sample(img, pos[0] + np.stack(np.meshgrid(axis, axis, indexing="ij"), -1))
    axis2 = np.arange(-10, 11, 2)
    expect_coarse = sample(img, pos[0] + np.stack(np.meshgrid(axis2, axis2, indexing="ij"), -1))
    assert np.allclose(fine, expect_fine, atol=1e-6) and np.allclose(coarse, expect_coarse, atol=1e-6)
    # at an integer position the fine window is the image crop
    crop = fine_view(img[None], np.array([[20.0, 31.0]]))[0]
    assert np.array_equal(crop, img[15:26, 26:37])


def test_window_scale_widens_the_span():
    assert np.ptp(window_offsets(1.0)[..., 0]) == 10 and np.ptp(window_offsets(2.0)[..., 1]) == 20
    assert np.ptp(window_offsets(1.5)[..., 0]) == 15 and np.ptp(window_offsets(3.0)[..., 0]) == 30  # 16.5 / 31.5 px spans


def test_history_raster_marks_the_segment_pixels():
    raster = np.zeros((2, 20, 20), dtype=np.float32)
    rasterise(raster, np.array([[5.0, 5.0], [0.0, 0.0]]), np.array([[5.0, 9.0], [3.0, 3.0]]))
    assert set(zip(*np.nonzero(raster[0]))) == {(5, c) for c in range(5, 10)}
    assert set(zip(*np.nonzero(raster[1]))) == {(i, i) for i in range(4)}
