"""Sliding-window inference and whole-slide segmentation, checked against a brute-force reference."""

from __future__ import annotations

import itertools
import math
import threading
import tracemalloc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from medloop.app.engine import JobCancelled
from medloop.app.engine.tiling import (
    importance_map,
    predict_labels,
    segment_slide,
    sliding_window_inference,
    tile_grid,
)
from tests.app.io.slide_synth import write_synthetic_slide

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# A brute-force reference, written from MONAI's description rather than from our code: pad the
# whole image, run every tile on its own, add prediction * weight and weight into full-size
# float64 maps, divide, crop.


def reference_starts(size: int, roi: int, overlap: float) -> list[int]:
    interval = roi if roi == size else max(int(roi * (1 - overlap)), 1)
    starts, d = [], 0
    while True:
        starts.append(min(d * interval, size - roi))
        if d * interval + roi >= size:
            return starts
        d += 1


def reference_weights(roi, blend, sigma_scale=0.125) -> np.ndarray:
    if blend == "constant":
        return np.ones(roi)
    w = np.ones(roi)
    for axis, r in enumerate(roi):
        x = np.arange(r) - (r - 1) / 2
        g = np.exp(-(x**2) / (2 * (sigma_scale * r) ** 2))
        w = w * g.reshape([-1 if a == axis else 1 for a in range(len(roi))])
    return np.maximum(w, max(w.min(), 1e-3))


def reference(image, predictor, roi, overlap=0.25, blend="gaussian", divisible_by=1, activation=None):
    image = np.asarray(image, dtype=np.float64)
    spatial = image.shape[1:]
    roi = [-(-r // divisible_by) * divisible_by for r in roi]
    padded = [max(s, r) for s, r in zip(spatial, roi)]
    before = [(p - s) // 2 for p, s in zip(padded, spatial)]
    inside = (slice(None), *(slice(b, b + s) for b, s in zip(before, spatial)))
    big = np.zeros((image.shape[0], *padded))
    big[inside] = image
    w = reference_weights(roi, blend)
    out = count = None
    for start in itertools.product(*(reference_starts(p, r, overlap) for p, r in zip(padded, roi))):
        sl = tuple(slice(s, s + r) for s, r in zip(start, roi))
        tile = torch.from_numpy(big[(slice(None), *sl)][None].astype(np.float32))
        with torch.no_grad():
            y = predictor(tile)
        if activation == "softmax":
            y = torch.softmax(y, 1)
        elif activation == "sigmoid":
            y = torch.sigmoid(y)
        y = y[0].double().numpy()
        if out is None:
            out, count = np.zeros((y.shape[0], *padded)), np.zeros(padded)
        out[(slice(None), *sl)] += y * w
        count[sl] += w
    return (out / count)[inside]


def small_net(in_channels: int, out_channels: int, dims: int, seed: int = 0) -> torch.nn.Module:
    """Two convolutions: not translation-invariant at tile borders (zero padding), so every
    tile placement shows in the result."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(
        conv(in_channels, 4, 3, padding=1), torch.nn.Tanh(), conv(4, out_channels, 3, padding=1)
    ).eval()


def n_tiles(spatial, roi, overlap, divisible_by=1) -> int:
    roi = [-(-r // divisible_by) * divisible_by for r in roi]
    return math.prod(len(reference_starts(max(s, r), r, overlap)) for s, r in zip(spatial, roi))


# --------------------------------------------------------------------------------------------
# Equality with the reference


CASES = [
    # (shape (C, *spatial), roi, overlap, divisible_by)
    ((1, 37, 53), (16, 20), 0.25, 1),
    ((2, 45, 31), (16, 16), 0.0, 1),
    ((1, 33, 40), (12, 15), 0.5, 1),
    ((1, 10, 13), (16, 16), 0.25, 1),  # smaller than the roi on both axes
    ((1, 50, 9), (16, 16), 0.5, 1),  # smaller on one axis only
    ((1, 29, 35), (14, 15), 0.25, 8),  # roi rounded up to (16, 16)
    ((1, 19, 23, 17), (8, 9, 10), 0.25, 1),
    ((2, 15, 12, 21), (8, 8, 8), 0.0, 1),
    ((1, 13, 17, 11), (6, 7, 6), 0.5, 1),
    ((1, 5, 20, 9), (8, 8, 8), 0.25, 4),  # padded and rounded in 3-D
]


@pytest.mark.parametrize("shape, roi, overlap, divisible_by", CASES)
def test_matches_brute_force_reference(shape, roi, overlap, divisible_by):
    rng = np.random.default_rng(sum(shape))
    image = rng.standard_normal(shape).astype(np.float32)
    net = small_net(shape[0], 3, len(shape) - 1)
    out = sliding_window_inference(
        image, net, roi, overlap=overlap, batch_size=3, divisible_by=divisible_by
    )
    expected = reference(image, net, roi, overlap, divisible_by=divisible_by)
    assert out.shape == (3, *shape[1:]) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid", None])
def test_blends_and_activations_match_reference(blend, activation):
    image = np.random.default_rng(1).standard_normal((1, 41, 38)).astype(np.float32)
    net = small_net(1, 2, 2, seed=3)
    out = sliding_window_inference(image, net, (16, 16), 0.25, blend=blend, activation=activation)
    expected = reference(image, net, (16, 16), 0.25, blend=blend, activation=activation)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
    if activation == "softmax":
        np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)


def test_constant_and_gaussian_blends_differ_where_tiles_disagree():
    image = np.random.default_rng(2).standard_normal((1, 40, 40)).astype(np.float32)
    net = small_net(1, 1, 2)
    g = sliding_window_inference(image, net, (16, 16), 0.5, blend="gaussian")
    c = sliding_window_inference(image, net, (16, 16), 0.5, blend="constant")
    assert np.abs(g - c).max() > 1e-3
    # one tile covering the whole image: no blending, both are the network's own output
    with torch.no_grad():
        whole = net(torch.from_numpy(image[:, :16, :16])[None])[0].numpy()
    for blend in ("gaussian", "constant"):
        one = sliding_window_inference(image[:, :16, :16], net, (16, 16), 0.5, blend=blend)
        np.testing.assert_allclose(one, whole, atol=1e-6)


def test_importance_map_like_monai():
    w = importance_map((9, 8), "gaussian").numpy()
    assert w.dtype == np.float32 and w.shape == (9, 8)
    np.testing.assert_allclose(w, reference_weights((9, 8), "gaussian"), rtol=1e-6)
    assert w.argmax() == np.ravel_multi_index((4, 3), w.shape)  # centred (odd axis: peak row 4)
    assert w.min() == pytest.approx(1e-3)  # corners clipped
    assert (importance_map((5, 6, 7), "constant").numpy() == 1).all()


def test_tile_grid_is_monai_grid():
    grid = tile_grid((100, 37), (32, 40), 0.25)
    assert grid.roi == (32, 40) and grid.padded == (100, 40) and grid.pad_before == (0, 1)
    assert grid.starts == ((0, 24, 48, 68), (0,))  # interval int(32 * 0.75) = 24; last flush
    assert tile_grid((30, 30), (15, 15), 0.5, divisible_by=8).roi == (16, 16)


@pytest.mark.parametrize("shape", [(1, 37, 29), (2, 9, 11, 13), (1, 7, 5)])
def test_identity_predictor_reproduces_the_input(shape):
    """Weights sum to one everywhere: at borders, in overlaps, with padding."""
    image = np.random.default_rng(3).uniform(-5, 5, shape).astype(np.float32)
    roi = (8,) * (len(shape) - 1)
    for overlap in (0.0, 0.25, 0.6):
        out = sliding_window_inference(image, lambda x: x, roi, overlap=overlap, batch_size=5)
        np.testing.assert_allclose(out, image, rtol=1e-6, atol=1e-6)


def test_out_dtype_and_bad_predictor_output():
    image = np.ones((1, 20, 20), np.float32)
    out = sliding_window_inference(image, lambda x: x, 8, out_dtype=np.float16)
    assert out.dtype == np.float16 and (out == 1).all()
    with pytest.raises(ValueError, match="must return"):
        sliding_window_inference(image, lambda x: x[..., :4], 8)
    with pytest.raises(ValueError, match="2 or 3 spatial axes"):
        sliding_window_inference(np.ones((20, 20), np.float32), lambda x: x, 8)


# --------------------------------------------------------------------------------------------
# Progress and cancellation


def test_progress_once_per_batch_ending_at_total():
    image = np.zeros((1, 100, 90), np.float32)
    total = n_tiles((100, 90), (32, 32), 0.25)
    calls = []
    sliding_window_inference(image, lambda x: x, (32, 32), 0.25, batch_size=3,
                             progress=lambda d, t: calls.append((d, t)))
    assert total == 16
    assert len(calls) == math.ceil(total / 3)
    assert calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted({d for d, _ in calls})  # strictly increasing
    assert all(t == total for _, t in calls)


def test_should_stop_after_first_batch_cancels_before_the_second():
    image = np.zeros((1, 100, 90), np.float32)
    polls, predicted = [], []

    def should_stop():
        polls.append(1)
        return len(polls) > 1

    def predictor(x):
        predicted.append(x.shape[0])
        return x

    with pytest.raises(JobCancelled):
        sliding_window_inference(image, predictor, (32, 32), 0.25, batch_size=4, should_stop=should_stop)
    assert predicted == [4]


# --------------------------------------------------------------------------------------------
# Streaming a dask image


class ChunkLedger:
    """Counts chunk computations and the bytes of chunks alive at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live = self.peak = self.computed = 0

    def make(self, block_info=None) -> np.ndarray:
        info = block_info[None]
        (_, _), (y, _), (x, _) = info["array-location"]
        chunk = np.full(info["chunk-shape"], (y // 250 * 16 + x // 250) % 7, dtype=np.float32)
        with self.lock:
            self.computed += 1
            self.live += chunk.nbytes
            self.peak = max(self.peak, self.live)
        weakref.finalize(chunk, self._freed, chunk.nbytes)
        return chunk

    def _freed(self, nbytes: int) -> None:
        with self.lock:
            self.live -= nbytes


def test_dask_image_is_read_tile_by_tile():
    import dask.array as da

    ledger = ChunkLedger()
    side, chunk = 4000, 250
    image = da.map_blocks(ledger.make, chunks=((1,), (chunk,) * 16, (chunk,) * 16), dtype=np.float32)
    image_bytes = side * side * 4
    tracemalloc.start()
    try:
        out = sliding_window_inference(image, lambda x: x * 2, (512, 512), 0.25, batch_size=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the result is right ...
    expected = np.full((side, side), 0, np.float32)
    for i, j in itertools.product(range(16), range(16)):
        expected[i * chunk : (i + 1) * chunk, j * chunk : (j + 1) * chunk] = (i * 16 + j) % 7
    np.testing.assert_allclose(out[0], 2 * expected, atol=1e-5)
    # ... every chunk was computed, each only a few times (tiles overlap) ...
    assert 256 <= ledger.computed <= 4 * 256
    # ... never more than a few batches' worth of chunks at once ...
    assert ledger.peak <= image_bytes / 16
    # ... and, the output buffer aside, memory stayed far below the image's size.
    assert peak - out.nbytes <= image_bytes / 4


# --------------------------------------------------------------------------------------------
# Labels and whole slides


def test_predict_labels():
    p = np.array([[[0.1, 0.7]], [[0.5, 0.2]], [[0.4, 0.1]]])
    labels = predict_labels(p)
    assert labels.dtype == np.uint8 and labels.tolist() == [[1, 0]]
    assert predict_labels(np.array([[[0.2, 0.8]]])).tolist() == [[0, 1]]
    assert predict_labels(np.zeros((300, 2, 2))).dtype == np.uint16


@pytest.mark.parametrize("k", [2, 3, 8, 9])
def test_predict_labels_equals_argmax_with_ties_to_the_lower_class(k):
    p = np.random.default_rng(k).integers(0, 4, size=(k, 6, 7, 5)).astype(np.float32)  # many ties
    labels = predict_labels(p)
    np.testing.assert_array_equal(labels, np.argmax(p, axis=0))
    assert labels.dtype == np.uint8


def pointwise(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel logits from RGB in [0, 1]: red, green, or neither (an offset avoids ties)."""
    return torch.stack([x[:, 0], x[:, 1], torch.full_like(x[:, 0], 0.5 + 1 / 1024)], dim=1) * 4


@pytest.fixture(scope="module")
def synthetic_level(tmp_path_factory):
    from medloop.app.io.slide import read_slide

    path = tmp_path_factory.mktemp("slide") / "slide.tif"
    write_synthetic_slide(path, size=(2048, 3072), tile=256)
    return read_slide(path).pyramid[0]


def test_segment_slide_equals_whole_level_inference(synthetic_level, tmp_path):
    import tifffile

    level = synthetic_level
    out = tmp_path / "labels.tif"
    calls = []
    tracemalloc.start()
    try:
        result = segment_slide(
            level, pointwise, out, (0.25, 0.25), roi_size=(256, 256), overlap=0.125,
            block_size=512, batch_size=4, progress=lambda d, t: calls.append((d, t)),
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result == out and out.is_file()
    # in memory, all at once: the level as one float image through the same predictor
    rgb = np.asarray(level)
    x = torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32) / 255)[None]
    expected = predict_labels(torch.softmax(pointwise(x), 1)[0].numpy())
    assert len(np.unique(expected)) == 3
    with tifffile.TiffFile(out) as tif:
        pages = [p.asarray() for p in tif.pages]
    assert len(pages) == 4  # 2048x3072 -> ... -> 256x384
    np.testing.assert_array_equal(pages[0], expected)
    for k, page in enumerate(pages[1:], start=1):
        np.testing.assert_array_equal(page, expected[:: 2**k, :: 2**k])
    assert calls and calls[-1][0] == calls[-1][1]
    # memory: a few blocks, not the level (its float probabilities alone would be 72 MiB)
    whole_probabilities = 3 * 2048 * 3072 * 4
    assert peak <= whole_probabilities / 3


def test_segment_slide_cancel_leaves_nothing(synthetic_level, tmp_path):
    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) > 3

    out = tmp_path / "labels.tif"
    with pytest.raises(JobCancelled):
        segment_slide(synthetic_level, pointwise, out, (0.25, 0.25), roi_size=(256, 256),
                      block_size=512, num_classes=3, should_stop=should_stop)
    assert list(Path(tmp_path).iterdir()) == []


def test_edge_padding_repeats_the_border_where_the_image_is_smaller_than_the_roi():
    """``pad_mode="edge"``: a 3x3 mean over a 10x7 image in a 16x16 tile sees the border voxels
    repeated (as training patches are padded), exactly; the default sees zeros."""
    from scipy import ndimage

    from medloop.app.engine.tiling import sliding_window_inference

    rng = np.random.default_rng(0)
    image = rng.uniform(1, 2, (1, 10, 7)).astype(np.float32)
    mean3 = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    mean3.weight.data.fill_(1 / 9)
    expected = {
        "edge": ndimage.uniform_filter(np.pad(image[0], 4, mode="edge"), 3, mode="constant")[4:-4, 4:-4],
        "constant": ndimage.uniform_filter(image[0], 3, mode="constant", cval=0.0),
    }
    for mode, want in expected.items():
        got = sliding_window_inference(image, mean3, (16, 16), pad_mode=mode)[0]
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert abs(float(expected["edge"][0, 0] - expected["constant"][0, 0])) > 0.3
    with pytest.raises(ValueError, match="unknown pad_mode 'wrap'"):
        sliding_window_inference(image, mean3, (16, 16), pad_mode="wrap")
