"""Seed 000 output upscaling: interleaving, shifts, fusion, exact fine geometry, k = 1 equals
the plain prediction, and sub-voxel boundaries placed where the image puts them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medloop.app.engine.tiling import sliding_window_inference
from medloop.app.io.image import MedImage
from medloop.models import registry
from medloop.plugins.segmentation import upscale
from medloop.plugins.segmentation.method import SegmentParams, network_input, segment
from tests.models.tiny import Threshold, make_tiny_model


def test_interleaving_puts_output_n_of_shift_j_at_n_k_plus_j():
    factors = (2, 3)
    offsets = upscale.shift_offsets(factors, "start")
    assert len(offsets) == 6
    d = (4, 5)
    outputs = np.zeros((6, 1, *d), np.float32)
    for s, combo in enumerate(offsets):
        (_, j0), (_, j1) = combo
        n0, n1 = np.meshgrid(np.arange(d[0]), np.arange(d[1]), indexing="ij")
        outputs[s, 0] = 1000 * (n0 * 2 + j0) + (n1 * 3 + j1)  # encodes the fine index it must land on
    fine = upscale.interleave(outputs, factors, "start")[0]
    m0, m1 = np.meshgrid(np.arange(8), np.arange(15), indexing="ij")
    np.testing.assert_array_equal(fine, 1000 * m0 + m1)


def test_overlap_predicts_every_fine_voxel_from_both_neighbours():
    # k = 2, overlap: shift t lands on n * 2 + j, shift t - 1 on (n - 1) * 2 + j.
    offsets = upscale.shift_offsets((2,), "centre", overlap=True)
    d = 4
    outputs = np.zeros((4, 1, d), np.float32)
    for s, ((t, f),) in enumerate(offsets):
        outputs[s, 0] = np.arange(d) * 2 + f  # encodes its own fine index
    counts = upscale.fuse(np.ones_like(outputs), offsets, (2,))
    np.testing.assert_array_equal(counts[0], np.ones(8))
    fused = upscale.fuse(outputs, offsets, (2,))
    np.testing.assert_array_equal(fused[0], np.arange(8))  # every contribution landed where it encodes


def test_shifts_are_j_over_k_and_centred_shifts_are_symmetric():
    start = [t for ((t, _),) in upscale.shift_offsets((3,), "start")]
    centre = [t for ((t, _),) in upscale.shift_offsets((3,), "centre")]
    np.testing.assert_allclose(start, [0, 1 / 3, 2 / 3])
    np.testing.assert_allclose(centre, [-1 / 3, 0, 1 / 3])
    both = upscale.shift_offsets((2,), "centre", overlap=True)
    assert [(round(t, 6), f) for ((t, f),) in both] == [(-0.25, 0), (0.25, 1), (-1.25, -2), (-0.75, -1)]


def test_shifted_copies_sample_the_image_between_voxels():
    x = np.arange(10, dtype=np.float32)[None, :, None] * np.ones((1, 10, 4), np.float32)  # ramp along axis 0
    offsets = upscale.shift_offsets((4, 1), "start")
    copies = upscale.shifted_copies(x, offsets, order=1)
    for s, ((t, _), _) in enumerate(offsets):
        np.testing.assert_allclose(copies[s, 0, :9, 0], np.arange(9) + t, atol=1e-5)  # linear between voxels
        assert copies[s, 0, 9, 0] == 9.0  # the edge is clamped, not zero-filled
    np.testing.assert_array_equal(copies[0], x)  # shift 0 is an exact copy
    # Cubic B-splines reproduce a ramp exactly away from the edges, and equal scipy's N-D
    # spline evaluation there on any image.
    ramp = np.arange(40, dtype=np.float32)[None, :, None] * np.ones((1, 40, 2), np.float32)
    cubic = upscale.shifted_copies(ramp, offsets, order=3)
    np.testing.assert_allclose(cubic[1, 0, 15:25, 0], np.arange(15, 25) + 0.25, atol=1e-5)
    from scipy import ndimage

    noise = np.random.default_rng(0).random((1, 30, 24, 6)).astype(np.float32)
    both = upscale.shifted_copies(noise, [((0.4, 1), (-0.3, 0), (0.0, 0))], order=3)[0, 0]
    ref = ndimage.shift(noise[0], (-0.4, 0.3, 0.0), order=3, mode="nearest")
    np.testing.assert_allclose(both[10:20, 8:16], ref[10:20, 8:16], atol=1e-4)


def test_fusion_mean_and_vote():
    # One fine voxel seen twice (overlap): probabilities (0.9, 0.1) and (0.4, 0.6) -> mean picks
    # class 0, a vote is 1:1 and goes to the higher mean, class 0; with a third 'class 1' it is 1.
    offsets = [((0.0, 0),), ((-1.0, -1),)]
    outputs = np.array([[[0.9, 0.9]], [[0.1, 0.1]]], np.float32).transpose(1, 0, 2)  # (S=1,K=2,d=2)
    two = np.concatenate([outputs, np.array([[[0.4, 0.4], [0.6, 0.6]]], np.float32)])
    mean = upscale.fuse(two, offsets, (1,), "mean")
    np.testing.assert_allclose(mean[:, 0], [(0.9 + 0.4) / 2, (0.1 + 0.6) / 2])
    np.testing.assert_array_equal(mean[:, 1], np.float32([0.9, 0.1]))  # seen once: the first output alone
    vote = upscale.fuse(two, offsets, (1,), "vote")
    assert vote[:, 0].argmax() == 0 and vote[:, 1].argmax() == 0  # voxel 1: only the first output
    three = np.concatenate([two, np.array([[[0.3, 0.3], [0.7, 0.7]]], np.float32)])
    vote3 = upscale.fuse(three, offsets + [((-1.0, -1),)], (1,), "vote")
    assert vote3[:, 0].argmax() == 1  # 2 votes to 1
    np.testing.assert_allclose(upscale.fuse(three, offsets + [((-1.0, -1),)], (1,), "mean")[:, 0], [1.6 / 3, 1.4 / 3], rtol=1e-6)


def test_parse_factors_and_its_messages():
    assert upscale.parse_factors("z=3", 3) == (3, 1, 1)
    assert upscale.parse_factors(["z=2", "x=4"], 3) == (2, 1, 4)
    assert upscale.parse_factors("y=2,x=3", 2) == (2, 3)
    with pytest.raises(upscale.UpscaleError) as e:
        upscale.parse_factors("z=3", 2)
    assert str(e.value) == "cannot read upscale factor 'z=3'; write AXIS=K with AXIS one of y, x (e.g. z=3)"
    with pytest.raises(upscale.UpscaleError) as e:
        upscale.parse_factors("z=0", 3)
    assert str(e.value) == "upscale factor 'z=0' must be between 1 and 16"
    with pytest.raises(upscale.UpscaleError) as e:
        upscale.parse_factors("z=1.5", 3)
    assert str(e.value) == "upscale factor 'z=1.5' is not a whole number; write e.g. z=3"


# --- through segment(): a registered card with a threshold "network" ---------------------------




@pytest.fixture
def model_dir(tmp_path):
    torch.set_num_threads(1)
    weights, card = make_tiny_model(tmp_path / "src", spatial_dims=3)
    registry.register_model(weights, card, tmp_path / "zoo")
    return tmp_path / "zoo"


def oblique_volume(values: np.ndarray) -> MedImage:
    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return MedImage.from_array(values.astype(np.float32), spacing=(0.8, 0.9, 4.5), origin=(10.0, -20.0, 30.0), direction=direction)


def test_k1_is_the_plain_prediction_exactly(model_dir):
    rng = np.random.default_rng(0)
    image = MedImage.from_array(rng.random((12, 20, 24)).astype(np.float32), spacing=(1.0, 1.0, 1.0))
    net = Threshold(3)
    params = SegmentParams(model="tiny-threshold", models_dir=model_dir, probabilities=True, roi_size=(8, 16, 16))
    result = segment(image, params, network=net)
    card = registry.get_model("tiny-threshold", model_dir).card
    plain = sliding_window_inference(network_input(image, card), net, roi_size=(8, 16, 16), overlap=0.25, batch_size=2, activation="softmax")
    np.testing.assert_array_equal(np.moveaxis(np.asarray(result.probabilities.array), -1, 0), plain)
    np.testing.assert_array_equal(result.labels.array, plain.argmax(0))


def test_upscaled_grid_is_exact_and_boundaries_land_between_slices(model_dir):
    # Intensity rises linearly along z; the 0.5 crossing lies at coarse z index 6.3, i.e. between
    # slices. Seed 000 must put the label boundary at the fine voxel nearest 6.3; nearest-neighbour
    # upsampling can only put it on a coarse slice border.
    z = np.arange(14, dtype=np.float32)
    values = np.broadcast_to(((z - 6.3) * 0.1 + 0.5)[:, None, None], (14, 10, 12)).copy()
    image = oblique_volume(values)
    params = SegmentParams(model="tiny-threshold", models_dir=model_dir, upscale=(3, 1, 1), roi_size=(16, 16, 16))
    result = segment(image, params, network=Threshold(3))
    labels = result.labels
    assert labels.shape == (42, 10, 12)
    np.testing.assert_allclose(labels.spacing, (0.8, 0.9, 1.5))
    np.testing.assert_allclose(labels.direction, image.direction)
    # fine voxel m sits at coarse continuous index (m - 1) / 3 along z, the same physical point
    for m in (0, 7, 41):
        fine_point = labels.index_to_physical(np.array([2.0, 3.0, m]))
        coarse_point = image.index_to_physical(np.array([2.0, 3.0, (m - 1) / 3]))
        np.testing.assert_allclose(fine_point, coarse_point, atol=1e-9)
    column = np.asarray(labels.array)[:, 5, 5]
    first_fg = int(np.argmax(column == 1))
    assert np.all(column[first_fg:] == 1) and np.all(column[:first_fg] == 0)
    position = (first_fg - 1) / 3  # coarse index of the first foreground fine voxel
    assert 6.3 <= position < 6.3 + 1 / 3 + 1e-9, position
    assert result.provenance["upscale"] == {"factors": [3, 1, 1], "align": "centre", "overlap": False, "fusion": "mean", "order": 3, "copies": 3}


def test_cli_upscale_writes_the_fine_grid(cli, tmp_path):
    from medloop.app.io.read import read_image
    from medloop.app.io.write import write_image

    weights, card = make_tiny_model(tmp_path / "src", spatial_dims=3)
    registry.register_model(weights, card, tmp_path / "zoo")
    image = oblique_volume(np.random.default_rng(1).random((6, 10, 12)))
    write_image(image, tmp_path / "in.nii.gz")
    out = cli("segment", str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / "out.nii.gz"), "--model", "tiny-threshold",
              "--models-dir", str(tmp_path / "zoo"), "--upscale", "z=3", "x=2")
    assert out.returncode == 0, out.stderr
    labels = read_image(tmp_path / "out.nii.gz")
    assert labels.shape == (18, 10, 24)
    np.testing.assert_allclose(labels.spacing, (0.4, 0.9, 1.5), atol=1e-6)
    expected_origin = image.index_to_physical(np.array([-0.25, 0.0, -1 / 3]))
    np.testing.assert_allclose(labels.origin, expected_origin, atol=1e-5)
    bad = cli("segment", str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / "o2.nii.gz"), "--model", "tiny-threshold",
              "--models-dir", str(tmp_path / "zoo"), "--upscale", "w=3")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "medloop: error: cannot read upscale factor 'w=3'; write AXIS=K with AXIS one of z, y, x (e.g. z=3)"
    assert not (tmp_path / "o2.nii.gz").exists()


def test_segment_runs_with_one_core_fewer_and_restores_the_thread_count(model_dir, monkeypatch):
    from medloop.app.engine import devices

    seen = []

    class Recording(torch.nn.Module):
        divisible_by = 1

        def __init__(self, dims: int):
            super().__init__()
            self.inner = Threshold(dims)

        def forward(self, x):
            seen.append(torch.get_num_threads())
            return self.inner(x)

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2})
    assert devices.default_cpu_threads() == 3 and devices.gui_cpu_threads() == 2  # issue #20: the CLI uses every core
    torch.set_num_threads(1)
    image = MedImage.from_array(np.random.default_rng(0).random((8, 8, 8)).astype(np.float32))
    segment(image, SegmentParams(model="tiny-threshold", models_dir=model_dir), network=Recording(3))
    assert set(seen) == {3} and torch.get_num_threads() == 1  # 3 cores -> 3 threads, then back
    seen.clear()
    with devices.thread_budget(devices.gui_cpu_threads()):  # a GUI job: one core stays with the event loop
        segment(image, SegmentParams(model="tiny-threshold", models_dir=model_dir), network=Recording(3))
    assert set(seen) == {2} and torch.get_num_threads() == 1
    seen.clear()
    segment(image, SegmentParams(model="tiny-threshold", models_dir=model_dir, num_threads=1), network=Recording(3))
    assert set(seen) == {1}


def test_copies_go_through_the_network_in_capped_calls_with_the_same_result():
    calls = []

    def predictor(x):
        calls.append(x.shape[0])
        return torch.cat([x, -x], dim=1) * 3.0

    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5) / 50  # B=2 tiles, 3 copies, C=1
    whole = upscale.stacked_predictor(predictor, copies=3)(x)
    assert calls == [6]
    calls.clear()
    capped = upscale.stacked_predictor(predictor, copies=3, max_tiles=4)(x)
    assert calls == [4, 2]
    torch.testing.assert_close(capped, whole, rtol=0, atol=0)
    # copy s of tile b: softmax over its own two classes, in channels 2s and 2s+1
    pair = torch.softmax(torch.stack([x[1, 2], -x[1, 2]]) * 3.0, dim=0)
    torch.testing.assert_close(whole[1, 4:6], pair)


def test_tiles_per_call_caps_cpu_calls_and_batches_everything_on_a_gpu():
    cpu = torch.device("cpu")
    assert upscale.tiles_per_call(cpu, batch_size=2, tile_voxels=128 * 128) == upscale.CPU_CALL_VOXELS // (128 * 128) == 16
    assert upscale.tiles_per_call(cpu, batch_size=2, tile_voxels=512 * 512) == 2  # never below the plain batch
    assert upscale.tiles_per_call(cpu, batch_size=1, tile_voxels=1024 * 1024) == 1
    assert upscale.tiles_per_call(torch.device("cuda"), batch_size=2, tile_voxels=512 * 512) is None
