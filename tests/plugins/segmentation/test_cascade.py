"""Seed 002 segment-then-segment: crop boxes (scaled, padded, squared, inside, tiny ones
dropped), OR-fusion, the whole cascade with threshold "networks", cancel, training crops,
segment() and the CLI with registered models, and the refusals."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from medloop.app.engine.jobs import JobCancelled
from medloop.app.io.image import MedImage
from medloop.models import registry
from medloop.plugins.segmentation import cascade
from medloop.plugins.segmentation.method import (
    CascadeInputError,
    SegmentationInputError,
    SegmentParams,
    segment,
)
from tests.models.tiny import Threshold, make_tiny_model

torch.set_num_threads(1)




# --- crop boxes --------------------------------------------------------------------------------


def test_box_is_padded_by_k_and_squared_around_its_centre():
    mask = np.zeros((40, 40), bool)
    mask[10:16, 12:20] = True  # 6 x 8; padded by 3: rows 7:19, cols 9:23 (12 x 14) -> square 14
    assert cascade.crop_boxes(mask, (40, 40), padding=3) == [(6, 9, 20, 23)]
    assert cascade.crop_boxes(mask, (40, 40), padding=0) == [(9, 12, 17, 20)]  # 8 x 8


def test_box_near_the_border_is_shifted_inside_keeping_its_size():
    mask = np.zeros((40, 40), bool)
    mask[0:6, 35:40] = True  # padded by 2: rows -2:8, cols 33:42 -> square 10 -> shifted to 0:10, 30:40
    assert cascade.crop_boxes(mask, (40, 40), padding=2) == [(0, 30, 10, 40)]


def test_components_under_5_px_are_dropped():
    mask = np.zeros((40, 40), bool)
    mask[30:33, 5:8] = True  # 3 x 3
    mask[30:33, 20:30] = True  # 3 x 10: too low
    mask[5:10, 5:10] = True  # 5 x 5: kept
    assert cascade.crop_boxes(mask, (40, 40), padding=2) == [(3, 3, 12, 12)]


def test_coarse_boxes_are_scaled_to_the_full_grid_before_the_5_px_test():
    coarse = np.zeros((10, 10), bool)
    coarse[2:4, 5:6] = True  # full res rows 8:16, cols 20:24: 4 px wide -> dropped
    coarse[7:9, 1:3] = True  # full res rows 28:36, cols 4:12 -> padded by 1 -> (27, 3, 37, 13)
    assert cascade.crop_boxes(coarse, (40, 40), padding=1) == [(27, 3, 37, 13)]


def test_box_larger_than_the_image_is_clipped_to_it():
    mask = np.zeros((12, 30), bool)
    mask[2:10, 5:25] = True  # padded by 2: 12 x 24 -> square 24 > 12 rows: rows clipped to 0:12
    assert cascade.crop_boxes(mask, (12, 30), padding=2) == [(0, 3, 12, 27)]


def test_every_box_is_square_inside_and_contains_its_padded_component():
    rng = np.random.default_rng(0)
    mask = rng.random((24, 32)) > 0.93
    for y0, x0, y1, x1 in cascade.crop_boxes(mask, (96, 128), padding=5):
        assert 0 <= y0 < y1 <= 96 and 0 <= x0 < x1 <= 128
        assert y1 - y0 == x1 - x0 >= 5 + 2 * 5


# --- fusion ------------------------------------------------------------------------------------


def test_overlapping_crops_fuse_by_max_foreground_probability():
    a = np.stack([np.full((4, 4), 0.3), np.full((4, 4), 0.7)]).astype(np.float32)
    b = np.stack([np.full((4, 4), 0.6), np.full((4, 4), 0.4)]).astype(np.float32)
    b[:, 1, 1] = (0.1, 0.9)  # image pixel (3, 3), inside both crops
    fused = cascade.fuse_crops((6, 6), [a, b], [(0, 0, 4, 4), (2, 2, 6, 6)])
    expected = np.zeros((6, 6), np.float32)
    expected[0:4, 0:4] = 0.7
    expected[4:6, 2:6] = 0.4
    expected[2:4, 4:6] = 0.4
    expected[3, 3] = 0.9
    np.testing.assert_array_equal(fused[1], expected)
    np.testing.assert_array_equal(fused[0] + fused[1], np.ones((6, 6), np.float32))
    assert fused[0, 5, 0] == 1.0 and fused[0, 0, 5] == 1.0  # outside every crop: background


def test_fused_labels_are_the_or_of_the_crops_masks():
    rng = np.random.default_rng(1)
    boxes = [(0, 0, 10, 10), (5, 5, 15, 15), (3, 8, 13, 18), (10, 0, 20, 10)]
    crops, union = [], np.zeros((20, 20), bool)
    for y0, x0, y1, x1 in boxes:
        p1 = rng.random((y1 - y0, x1 - x0)).astype(np.float32)
        crops.append(np.stack([1 - p1, p1]))
        union[y0:y1, x0:x1] |= p1 > 0.5
    fused = cascade.fuse_crops((20, 20), crops, boxes)
    np.testing.assert_array_equal(fused.argmax(0) == 1, union)


# --- the whole cascade -------------------------------------------------------------------------


def _scene() -> np.ndarray:
    image = np.zeros((64, 64), np.float32)
    image[8:16, 8:16] = 1.0  # coarse (S = 16) pixels 2:4 -> crop (4, 4, 20, 20), 16 x 16 = S
    image[40:48, 44:52] = 0.9
    image[43, 47] = 0.2  # a hole only the full-resolution crop can see
    image[5, 5] = 0.8  # in the first crop: the fine model finds it
    image[60, 2] = 1.0  # a speck the coarse model misses: outside every crop, background
    return image


def test_cascade_segments_the_crops_at_full_resolution_and_nothing_else():
    image = _scene()
    calls = []
    result = cascade.cascade_predict(image[None], Threshold(), Threshold(), 16, padding=4,
                                     progress=lambda d, t: calls.append((d, t)))
    assert result.boxes == [(4, 4, 20, 20), (36, 40, 52, 56)]
    inside = np.zeros(image.shape, bool)
    for y0, x0, y1, x1 in result.boxes:
        inside[y0:y1, x0:x1] = True
    expected = (image > 0.5) & inside
    np.testing.assert_array_equal(result.probabilities.argmax(0) == 1, expected)
    assert result.probabilities.shape == (2, 64, 64)
    assert calls == [(1, 2), (2, 2)]
    assert result.coarse_probabilities.shape == (2, 16, 16)


def test_cascade_runs_crops_in_batches():
    image = _scene()
    sizes = []

    class Counting(Threshold):
        def forward(self, x):
            sizes.append(x.shape[0])
            return super().forward(x)

    calls = []
    cascade.cascade_predict(image[None], Threshold(), Counting(), 16, padding=4, batch_size=1,
                            progress=lambda d, t: calls.append((d, t)))
    assert sizes == [1, 1] and calls == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("stop_after", [0, 1])
def test_cancel_raises_and_returns_nothing(stop_after):
    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) > stop_after

    calls = []
    with pytest.raises(JobCancelled):
        cascade.cascade_predict(_scene()[None], Threshold(), Threshold(), 16, padding=4,
                                progress=lambda d, t: calls.append(d), should_stop=should_stop)
    assert calls == ([] if stop_after == 0 else [1])


def test_no_objects_gives_all_background():
    result = cascade.cascade_predict(np.zeros((1, 32, 32), np.float32), Threshold(), Threshold(), 8)
    assert result.boxes == []
    assert (result.probabilities[0] == 1).all()


# --- fine training pairs -----------------------------------------------------------------------


def test_jitter_stays_in_range_and_reaches_both_ends():
    rng = np.random.default_rng(0)
    deltas = np.array([np.subtract(cascade.jitter_box((10, 10, 30, 40), 3, rng), (10, 10, 30, 40)) for _ in range(400)])
    assert deltas[:, :2].min() == -3 and deltas[:, :2].max() == 3
    dh, dw = deltas[:, 2] - deltas[:, 0], deltas[:, 3] - deltas[:, 1]
    assert dh.min() == -3 and dh.max() == 3 and dw.min() == -3 and dw.max() == 3
    assert cascade.jitter_box((10, 10, 30, 40), 0, rng) == (10, 10, 30, 40)


def test_training_pairs_are_gt_crops_resized_and_whole_empty_images():
    image = np.arange(64 * 64, dtype=np.float32).reshape(1, 64, 64) / 4096
    mask = np.zeros((64, 64), np.int64)
    mask[8:16, 8:16] = 1
    pairs = cascade.fine_training_pairs([image, image], [mask, np.zeros_like(mask)], 16, padding=4, jitter=0, rng=0)
    assert len(pairs) == 2
    (x0, y0), (x1, y1) = pairs
    np.testing.assert_array_equal(x0, image[:, 4:20, 4:20])  # the crop is 16 x 16 = S: no resizing
    np.testing.assert_array_equal(y0, mask[4:20, 4:20])
    assert x1.shape == (1, 16, 16) and y1.shape == (16, 16) and not y1.any()
    np.testing.assert_allclose(x1, torch.nn.functional.interpolate(
        torch.from_numpy(image)[None], size=(16, 16), mode="bilinear", antialias=True, align_corners=False)[0].numpy())
    jittered = cascade.fine_training_pairs([image] * 20, [mask] * 20, 16, padding=4, jitter=2, rng=1)
    assert all(x.shape == (1, 16, 16) and y.shape == (16, 16) and y.any() for x, y in jittered)


def test_any_target_keeps_objects_smaller_than_a_pixel_at_s():
    mask = np.zeros((16, 16), np.int64)
    mask[3, 5] = 1  # 1/16 of a pixel at S = 4: averaged away by area, kept by "any"
    mask[8:16, 8:16] = 2
    area = cascade.resize_mask(mask, 4)
    anyt = cascade.resize_mask(mask, 4, mode="any")
    expected = np.zeros((4, 4), np.int64)
    expected[2:, 2:] = 2
    np.testing.assert_array_equal(area, expected)
    expected[0, 1] = 1
    np.testing.assert_array_equal(anyt, expected)
    both = np.zeros((8, 8), np.int64)
    both[0:2, 0:1], both[0:2, 1:2] = 1, 2  # class 2 covers 2 px of the 4 x 4 block, class 1 also 2: first wins
    both[0, 2] = 2  # class 2 now has the larger area in that block
    assert cascade.resize_mask(both, 2, mode="any")[0, 0] == 2


def test_coarse_training_pairs_keep_every_object_with_the_any_target():
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), np.int64)
    centres = [(5, 5), (5, 40), (30, 20), (50, 50), (58, 10)]
    for y, x in centres:
        mask[y:y + 2, x:x + 2] = 1  # 2 x 2 px: 1/16 of a pixel at S = 8
    image = (0.2 + 0.6 * mask + rng.normal(0, 0.01, mask.shape)).astype(np.float32)
    (x_any, y_any), = cascade.coarse_training_pairs([image], [mask], 8, target="any")
    (x_area, y_area), = cascade.coarse_training_pairs([image], [mask], 8, target="area")
    assert x_any.shape == (1, 8, 8) and np.array_equal(x_any, x_area)
    assert y_any.sum() == len(centres) and not y_area.any()
    assert {(y // 8, x // 8) for y, x in centres} == set(zip(*np.nonzero(y_any)))
    with pytest.raises(ValueError, match="coarse target must be 'any' or 'area', got 'max'"):
        cascade.coarse_training_pairs([image], [mask], 8, target="max")


# --- segment() and the CLI with registered models ----------------------------------------------


def _register(tmp_path, name, input_size=None, classes=None):
    weights, card_path = make_tiny_model(tmp_path / "src" / name, spatial_dims=2, name=name)
    card = json.loads(card_path.read_text())
    if input_size is not None:
        card["inference"] = {"input_size": input_size}
    if classes is not None:
        card["medical"]["classes"] = classes
    card_path.write_text(json.dumps(card))
    registry.register_model(weights, card_path, tmp_path / "zoo")
    return tmp_path / "zoo"


@pytest.fixture
def zoo(tmp_path):
    _register(tmp_path, "coarse", input_size=[16, 16])
    _register(tmp_path, "fine", input_size=[16, 16])
    _register(tmp_path, "tiled")
    return _register(tmp_path, "other-classes", input_size=[16, 16], classes={"0": "background", "1": "a", "2": "b"})


def test_model_at_input_size_resizes_the_whole_image(zoo):
    image = MedImage.from_array(_scene(), spacing=(0.5, 0.5))
    result = segment(image, SegmentParams(model="coarse", models_dir=zoo, probabilities=True), network=Threshold())
    probs = cascade.predict_resized(_scene()[None], Threshold(), 16)
    np.testing.assert_array_equal(np.moveaxis(np.asarray(result.probabilities.array), -1, 0), probs)
    np.testing.assert_array_equal(result.labels.array, probs.argmax(0))
    assert result.labels.shape == (64, 64) and result.provenance["input_size"] == [16, 16]


def test_segment_with_cascade_gives_labels_on_the_image_grid_with_provenance(zoo):
    image = MedImage.from_array(_scene(), spacing=(0.5, 0.7), origin=(3.0, -2.0))
    params = SegmentParams(model="coarse", cascade="fine", cascade_padding=4, models_dir=zoo)
    result = segment(image, params, network=Threshold(), fine_network=Threshold())
    expected = cascade.cascade_predict(_scene()[None], Threshold(), Threshold(), 16, padding=4)
    np.testing.assert_array_equal(result.labels.array, expected.probabilities.argmax(0))
    np.testing.assert_allclose(result.labels.spacing, image.spacing)
    np.testing.assert_allclose(result.labels.origin, image.origin)
    info = result.provenance["cascade"]
    assert info["coarse"]["model"] == "coarse" and info["fine"]["model"] == "fine"
    assert info["crops"] == 2 and info["boxes"] == [[4, 4, 20, 20], [36, 40, 52, 56]] and info["padding"] == 4


def test_cascade_refusals_name_the_input_and_what_to_do(zoo):
    flat = MedImage.from_array(_scene(), spacing=(1.0, 1.0))
    volume = MedImage.from_array(np.zeros((4, 16, 16), np.float32), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(CascadeInputError) as e:
        segment(volume, SegmentParams(model="coarse", cascade="fine", models_dir=zoo))
    assert str(e.value) == (
        "the coarse model coarse segments 2-D images but the image is 3-D; --cascade needs two 3-D models "
        "(or segment it without --cascade)"
    )
    with pytest.raises(CascadeInputError) as e:
        segment(flat, SegmentParams(model="tiled", cascade="fine", models_dir=zoo))
    assert str(e.value) == (
        "the coarse model tiled has no inference.input_size in its card; --model must be a model trained on whole "
        "images resized to S x S (card inference.input_size: [S, S])"
    )
    with pytest.raises(CascadeInputError) as e:
        segment(flat, SegmentParams(model="coarse", cascade="other-classes", models_dir=zoo))
    assert str(e.value) == (
        "the coarse model coarse and the fine model other-classes segment different classes "
        "({0: 'background', 1: 'bright'} vs {0: 'background', 1: 'a', 2: 'b'}); "
        "pick a fine model trained for the coarse model's classes"
    )
    with pytest.raises(CascadeInputError) as e:
        segment(flat, SegmentParams(model="coarse", cascade="fine", upscale=(2, 2), models_dir=zoo))
    assert str(e.value) == "--cascade and --upscale cannot be combined; leave one out"
    with pytest.raises(SegmentationInputError) as e:
        segment(volume, SegmentParams(model="coarse", models_dir=zoo))
    assert str(e.value) == "model coarse segments 2-D images but the image is 3-D; pick a model for this kind of image"
    with pytest.raises(SegmentationInputError) as e:
        segment(flat, SegmentParams(model="coarse", upscale=(2, 1), models_dir=zoo))
    assert str(e.value) == "model coarse predicts at its input size and resizes back; --upscale does not apply, leave it out"


def test_cli_cascade_end_to_end(cli, tmp_path, zoo):
    from medloop.app.io.read import read_image
    from medloop.app.io.write import write_image

    image = MedImage.from_array(_scene(), spacing=(0.5, 0.7), origin=(3.0, -2.0))
    write_image(image, tmp_path / "in.nii.gz")
    out = cli("segment", str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / "out.nii.gz"), "--model", "coarse",
              "--cascade", "fine", "--models-dir", str(zoo))
    assert out.returncode == 0, out.stderr
    assert "crops segmented by fine" in out.stdout
    labels = read_image(tmp_path / "out.nii.gz")
    assert labels.shape == (64, 64)
    np.testing.assert_allclose(labels.spacing, (0.5, 0.7), atol=1e-6)
    bad = cli("segment", str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / "o2.nii.gz"), "--model", "tiled",
              "--cascade", "fine", "--models-dir", str(zoo))
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("medloop: error: the coarse model tiled has no inference.input_size")
    assert not (tmp_path / "o2.nii.gz").exists()
    pad = cli("segment", str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / "o3.nii.gz"), "--model", "coarse",
              "--cascade-padding", "4", "--models-dir", str(zoo))
    assert pad.returncode == 2
    assert pad.stderr.strip() == "medloop: error: --cascade-padding needs --cascade FINE_MODEL; add it or leave the padding out"


def _pair_dice(net, pairs) -> float:
    """Foreground Dice of ``net``'s argmax over (input, label) pairs, pooled."""
    with torch.inference_mode():
        pred = [net(torch.from_numpy(x)[None]).argmax(1)[0].numpy() for x, _ in pairs]
    tp = sum(int(((p == 1) & (y == 1)).sum()) for p, (_, y) in zip(pred, pairs))
    return 2 * tp / sum(int((p == 1).sum() + (y == 1).sum()) for p, (_, y) in zip(pred, pairs))


def test_cli_trains_a_fine_model_that_the_cascade_uses(cli, tmp_path):
    """`medloop train --cascade-fine`: starts from the coarse weights, learns the crops (its Dice on
    held-out crops beats the coarse model's), and the written card registers and runs."""
    from medloop.app.io.read import read_image
    from medloop.app.io.write import write_image
    from medloop.plugins.segmentation.method import SegmentParams, segment

    zoo = _register(tmp_path, "coarse", input_size=[16, 16])
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        scene = _scene()
        noisy = (scene * 0.4 + 0.3 + rng.normal(0, 0.05, scene.shape)).astype(np.float32)  # threshold 0.5 no longer separates
        write_image(MedImage.from_array(noisy), tmp_path / f"img{i}.tif")
        write_image(MedImage.from_array((scene > 0.5).astype(np.uint8)), tmp_path / f"mask{i}.tif")
        paths.append((tmp_path / f"img{i}.tif", tmp_path / f"mask{i}.tif"))
    out = cli("train", "--cascade-fine", "--model", "coarse", "--models-dir", str(zoo), "--images", *[str(a) for a, _ in paths],
              "--masks", *[str(b) for _, b in paths], "--out", str(tmp_path / "fine"), "--epochs", "3", timeout=300)
    assert out.returncode == 0, out.stderr
    card = json.loads((tmp_path / "fine" / "card.json").read_text(encoding="utf-8"))
    assert card["name"] == "coarse-fine" and card["inference"]["input_size"] == [16, 16]
    assert card["training"] == {"cascade_fine_of": "coarse", "images": 3, "epochs": 3, "seed": 0}
    registry.register_model(tmp_path / "fine" / "weights.pt", tmp_path / "fine" / "card.json", zoo)
    fine = registry.build_model(registry.get_model("coarse-fine", zoo))
    coarse_net = registry.build_model(registry.get_model("coarse", zoo))
    held_out_image = (_scene() * 0.4 + 0.3 + rng.normal(0, 0.05, (64, 64))).astype(np.float32)[None]
    held_out = cascade.fine_training_pairs([held_out_image], [(_scene() > 0.5).astype(np.int64)], 16, rng=5)

    assert _pair_dice(fine, held_out) > _pair_dice(coarse_net, held_out) + 0.1  # measured 0.79 vs 0.59
    image = read_image(paths[0][0])
    result = segment(image, SegmentParams(model="coarse", cascade="coarse-fine", models_dir=zoo))
    assert result.provenance["cascade"]["fine"]["model"] == "coarse-fine"


def _small_objects(rng, n=6):
    """A 64 x 64 image with ``n`` bright 3 x 3 squares on a noisy background, and its mask."""
    mask = np.zeros((64, 64), np.int64)
    for y, x in rng.integers(2, 59, size=(n, 2)):
        mask[y:y + 3, x:x + 3] = 1
    image = (0.3 + 0.4 * mask + rng.normal(0, 0.03, mask.shape)).astype(np.float32)
    return image, mask


def test_cli_trains_a_coarse_model_that_finds_objects_under_a_pixel(cli, tmp_path):
    """`medloop train --cascade-coarse`: from a base model's weights, on whole images resized to
    --input-size with 'any' masks; the trained model matches its targets better than the base
    model, and its card runs as a cascade's coarse model."""
    from medloop.app.io.read import read_image
    from medloop.app.io.write import write_image

    zoo = _register(tmp_path, "tiled")
    rng = np.random.default_rng(1)
    paths = []
    for i in range(4):
        image, mask = _small_objects(rng)
        write_image(MedImage.from_array(image), tmp_path / f"img{i}.tif")
        write_image(MedImage.from_array(mask.astype(np.uint8)), tmp_path / f"mask{i}.tif")
        paths.append((tmp_path / f"img{i}.tif", tmp_path / f"mask{i}.tif"))
    args = ["--models-dir", str(zoo), "--images", *[str(a) for a, _ in paths], "--masks", *[str(b) for _, b in paths]]
    bad = cli("train", "--cascade-coarse", "--model", "tiled", *args, "--out", str(tmp_path / "x"))
    assert bad.returncode == 2
    assert bad.stderr.strip() == "medloop: error: train --cascade-coarse needs --input-size S (model tiled has no inference.input_size)"
    odd = cli("train", "--cascade-coarse", "--model", "tiled", "--input-size", "15", *args, "--out", str(tmp_path / "x"))
    assert odd.returncode == 2
    assert odd.stderr.strip() == "medloop: error: input size 15 x 15 does not suit model tiled: give a positive multiple of 2"
    write_image(MedImage.from_array(np.zeros((3, 64, 64), np.float32)), tmp_path / "vol.nii.gz")
    write_image(MedImage.from_array(np.zeros((3, 64, 64), np.uint8)), tmp_path / "volmask.nii.gz")
    vol = cli("train", "--cascade-coarse", "--model", "tiled", "--input-size", "16", "--models-dir", str(zoo), "--images",
              str(tmp_path / "vol.nii.gz"), "--masks", str(tmp_path / "volmask.nii.gz"), "--out", str(tmp_path / "x"))
    assert vol.returncode == 2
    assert vol.stderr.strip() == (f"medloop: error: {tmp_path / 'vol.nii.gz'} is a 3-D image but model tiled segments 2-D images; "
                                  "start from a 3-D model")
    write_image(MedImage.from_array(np.full((64, 64), 3, np.uint8)), tmp_path / "three.tif")
    labels = cli("train", "--cascade-coarse", "--model", "tiled", "--input-size", "16", "--models-dir", str(zoo), "--images",
                 str(paths[0][0]), "--masks", str(tmp_path / "three.tif"), "--out", str(tmp_path / "x"))
    assert labels.returncode == 2
    assert labels.stderr.strip() == (f"medloop: error: {tmp_path / 'three.tif'} has label 3 but model tiled has classes 0..1; "
                                     "give masks with those labels")
    assert not (tmp_path / "x").exists()
    out = cli("train", "--cascade-coarse", "--model", "tiled", "--input-size", "16", *args, "--out", str(tmp_path / "coarse"),
              "--epochs", "20", timeout=300)
    assert out.returncode == 0, out.stderr
    card = json.loads((tmp_path / "coarse" / "card.json").read_text(encoding="utf-8"))
    assert card["name"] == "tiled-coarse" and card["inference"]["input_size"] == [16, 16]
    assert card["training"] == {"cascade_coarse_of": "tiled", "target": "any", "images": 4, "epochs": 20, "seed": 0}
    registry.register_model(tmp_path / "coarse" / "weights.pt", tmp_path / "coarse" / "card.json", zoo)
    trained = registry.build_model(registry.get_model("tiled-coarse", zoo))
    base = registry.build_model(registry.get_model("tiled", zoo))
    held_out = [_small_objects(np.random.default_rng(100 + i)) for i in range(3)]
    pairs = cascade.coarse_training_pairs([im for im, _ in held_out], [m for _, m in held_out], 16)

    assert _pair_dice(trained, pairs) > _pair_dice(base, pairs) + 0.5  # measured 0.86 vs 0.11
    result = segment(read_image(paths[0][0]), SegmentParams(model="tiled-coarse", cascade="tiled-coarse", models_dir=zoo))
    assert result.provenance["cascade"]["coarse"]["model"] == "tiled-coarse"


# --- 3-D: cube boxes, antialiased resizing, the cascade on a volume ------------------------------


def _blocks_volume() -> np.ndarray:
    """(32, 32, 32) in {0, 1}: two bright blocks aligned to the voxels of an 8^3 coarse grid."""
    volume = np.zeros((32, 32, 32), np.float32)
    volume[4:12, 4:12, 4:12] = 1.0
    volume[16:24, 12:20, 20:28] = 1.0
    return volume


def test_3d_box_is_padded_into_a_cube_and_shifted_inside():
    assert cascade.expand_box((4, 4, 4, 12, 12, 12), (32, 32, 32), 6) == (0, 0, 0, 20, 20, 20)  # -2..18 moved in
    assert cascade.expand_box((16, 12, 20, 24, 20, 28), (32, 32, 32), 6) == (10, 6, 12, 30, 26, 32)  # x 14..34 moved in
    assert cascade.expand_box((10, 10, 10, 12, 20, 14), (40, 40, 40), 0) == (6, 10, 7, 16, 20, 17)  # 2 x 10 x 4 -> 10^3
    assert cascade.expand_box((0, 0, 0, 4, 4, 30), (32, 32, 20), 1) == (0, 0, 0, 32, 32, 20)  # clipped where too big
    boxes = cascade.crop_boxes(_blocks_volume()[::4, ::4, ::4] > 0, (32, 32, 32), padding=4)
    assert boxes == [(0, 0, 0, 16, 16, 16), (12, 8, 16, 28, 24, 32)]


def test_3d_resize_is_antialiased_when_shrinking():
    checker = (np.indices((8, 8, 8)).sum(axis=0) % 2).astype(np.float32)
    x = torch.from_numpy(checker)[None, None]
    np.testing.assert_allclose(cascade.resize(x, 4).numpy(), 0.5, atol=1e-6)  # each 2^3 block averages to 0.5
    assert set(np.unique(cascade.resize(x, 4, "nearest").numpy())) <= {0.0, 1.0}
    grown = cascade.resize(torch.ones(1, 1, 4, 4, 4), (8, 6, 4))
    assert grown.shape == (1, 1, 8, 6, 4) and torch.allclose(grown, torch.ones_like(grown))


def test_3d_cascade_segments_each_block_in_its_own_cube():
    volume = _blocks_volume()
    result = cascade.cascade_predict(volume[None], Threshold(3), Threshold(3), 8, padding=4, fine_input_size=16)
    assert result.boxes == [(0, 0, 0, 16, 16, 16), (12, 8, 16, 28, 24, 32)]
    # crops are exactly the fine input size: no resizing, so the fused labels are the threshold exactly
    np.testing.assert_array_equal(result.probabilities.argmax(0), volume > 0.5)
    assert result.coarse_probabilities.shape == (2, 8, 8, 8)


def test_3d_training_pairs_keep_small_objects_and_crop_cubes():
    volume = _blocks_volume()
    mask = (volume > 0).astype(np.int64)
    mask[30, 30, 30] = 1  # one voxel: 1/64 of a coarse voxel at S = 8
    (_, y_any), = cascade.coarse_training_pairs([volume], [mask], 8, target="any")
    (_, y_area), = cascade.coarse_training_pairs([volume], [mask], 8, target="area")
    assert int(y_any.sum()) == 17 and int(y_area.sum()) == 16 and y_any[7, 7, 7] == 1 and y_area[7, 7, 7] == 0
    pairs = cascade.fine_training_pairs([volume], [mask], 16, padding=4, jitter=0, rng=0)
    assert len(pairs) == 2  # the lone voxel is under the 5-voxel minimum
    (x0, y0), _ = pairs
    np.testing.assert_array_equal(x0[0], volume[0:16, 0:16, 0:16])
    np.testing.assert_array_equal(y0, mask[0:16, 0:16, 0:16])


def test_segment_runs_a_3d_cascade_with_registered_models(tmp_path):
    for name, size in (("coarse3d", [8, 8, 8]), ("fine3d", [16, 16, 16])):
        weights, card_path = make_tiny_model(tmp_path / "src" / name, spatial_dims=3, name=name)
        card = json.loads(card_path.read_text())
        card["inference"] = {"input_size": size}
        card_path.write_text(json.dumps(card))
        registry.register_model(weights, card_path, tmp_path / "zoo")
    image = MedImage.from_array(_blocks_volume(), spacing=(0.8, 0.8, 2.0), origin=(1.0, 2.0, 3.0))
    params = SegmentParams(model="coarse3d", cascade="fine3d", cascade_padding=4, models_dir=tmp_path / "zoo")
    result = segment(image, params, network=Threshold(3), fine_network=Threshold(3))
    np.testing.assert_array_equal(result.labels.array, _blocks_volume() > 0.5)
    np.testing.assert_allclose(result.labels.spacing, (0.8, 0.8, 2.0))
    np.testing.assert_allclose(result.labels.origin, (1.0, 2.0, 3.0))
    assert result.provenance["cascade"]["boxes"] == [[0, 0, 0, 16, 16, 16], [12, 8, 16, 28, 24, 32]]
    assert result.provenance["cascade"]["input_size"] == [8, 8, 8]
    flat = MedImage.from_array(_scene(), spacing=(1.0, 1.0))
    with pytest.raises(CascadeInputError) as e:
        segment(flat, params)
    assert str(e.value) == (
        "the coarse model coarse3d segments 3-D images but the image is 2-D; --cascade needs two 2-D models "
        "(or segment it without --cascade)"
    )


# --- batched fine passes (issue #20 §4) --------------------------------------------------------


def _tiny_unet(dims: int) -> torch.nn.Module:
    """The tests' tiny U-Net (features 4-8, GroupNorm), seeded random weights, eval mode: its
    probabilities vary smoothly, unlike Threshold's, so batching differences would show."""
    from medloop.models.nets import build_network

    torch.manual_seed(7)
    net = build_network(f"unet{dims}d", spatial_dims=dims, in_channels=1, out_channels=2, features=[4, 8], norm="group")
    return net.eval()


def _objects(shape, count: int, seed: int) -> np.ndarray:
    """Seeded bright boxes of several sizes (8-16 px in 2-D, 8-10 voxels in 3-D: over two coarse
    pixels at the tests' S), one in each of ``count`` grid cells (32 px; 16 voxels), on a noisy
    dark background."""
    rng = np.random.default_rng(seed)
    image = rng.random(shape).astype(np.float32) * 0.3
    cell, low, high = (32, 8, 16) if len(shape) == 2 else (16, 8, 10)
    cells = list(itertools.product(*(range(s // cell) for s in shape)))
    for index in rng.permutation(len(cells))[:count]:
        size = rng.integers(low, high + 1, len(shape))
        start = [c * cell + int(rng.integers(1, cell - z)) for c, z in zip(cells[index], size)]
        image[tuple(slice(a, a + z) for a, z in zip(start, size))] = 0.7 + 0.3 * rng.random()
    return image


def _crop_by_crop(image: np.ndarray, fine, boxes, size) -> np.ndarray:
    """The reference: each crop resized, segmented and resized back on its own, then fused."""
    crops = []
    source = torch.from_numpy(image)
    for box in boxes:
        x = cascade.resize(source[(None, slice(None), *cascade.box_slices(box))], size)
        with torch.inference_mode():
            p = cascade.to_probabilities(fine(x))
        crops.append(cascade.resize(p, cascade.box_shape(box))[0].numpy())
    return cascade.fuse_crops(image.shape[1:], crops, boxes)


def _counted(net):
    calls = []
    net.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    return calls


@pytest.mark.parametrize("dims, shape, s, fine_s", [(2, (96, 96), 16, 16), (3, (48, 48, 48), 12, 16)])
def test_batched_cascade_equals_crop_by_crop(dims, shape, s, fine_s):
    image = _objects(shape, 6 if dims == 2 else 5, seed=dims)[None]
    fine = _tiny_unet(dims)
    results = {}
    for batch_size in (1, 3, None):
        params = cascade.CascadeParams(s, padding=2, batch_size=batch_size, fine_input_size=fine_s)
        results[batch_size] = cascade.segment_cascade(image, Threshold(dims), fine, params)
    boxes = results[1].boxes
    assert len(boxes) >= 3 and len({cascade.box_shape(b) for b in boxes}) >= 2  # several crops, several sizes
    reference = _crop_by_crop(image, fine, boxes, fine_s)
    labels = reference.argmax(0)
    assert 0 < (labels == 1).sum() < labels.size
    for batch_size, result in results.items():
        assert result.boxes == boxes
        np.testing.assert_array_equal(result.probabilities.argmax(0), labels)
        # oneDNN's convolutions sum in a batch-dependent order (with it off, batched logits are
        # bit-identical but 2-4x slower): measured up to 1.2e-6 here, so 2e-6, not exact
        np.testing.assert_allclose(result.probabilities, reference, rtol=0, atol=0 if batch_size == 1 else 2e-6)


@pytest.mark.parametrize("batch_size, batch_voxels, per_call", [(1, None, 1), (2, None, 2), (None, None, 64),
                                                                (None, 3 * 256, 3), (4, 3 * 256, 3), (5, 1, 1)])
def test_fine_model_is_called_once_per_batch(batch_size, batch_voxels, per_call):
    image = _objects((96, 96), 6, seed=2)[None]
    fine = _tiny_unet(2)
    calls, progress = _counted(fine), []
    params = cascade.CascadeParams(16, padding=2, batch_size=batch_size, batch_voxels=batch_voxels)
    result = cascade.segment_cascade(image, Threshold(), fine, params, progress=lambda d, t: progress.append((d, t)))
    n = len(result.boxes)
    batches = -(-n // per_call)
    assert n >= 4
    assert len(calls) == batches and sum(calls) == n and max(calls) == min(per_call, n)
    assert progress == [(d, 1 + batches) for d in range(1, batches + 2)]
    cpu = torch.device("cpu")
    assert cascade.crops_per_call(cascade.CascadeParams(128), 1, (128, 128), cpu) == 1  # 2^14 voxels
    assert cascade.crops_per_call(cascade.CascadeParams(16), 1, (16, 16, 16), cpu) == 4
    assert cascade.crops_per_call(cascade.CascadeParams(128), 1, (128, 128), torch.device("cuda")) == 64  # 2^20
    assert cascade.crops_per_call(cascade.CascadeParams(256, batch_size=8), 1, (256, 256), cpu) == 1
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        cascade.crops_per_call(cascade.CascadeParams(16, batch_size=0), 1, (16, 16), cpu)


def test_cancel_between_batches_stops_before_the_next_call():
    image = _objects((96, 96), 6, seed=2)[None]
    fine = _tiny_unet(2)
    calls, progress, polls = _counted(fine), [], []

    def should_stop():  # polled before the coarse pass, then before each fine batch
        polls.append(1)
        return len(polls) > 2

    params = cascade.CascadeParams(16, padding=2, batch_size=2)
    with pytest.raises(JobCancelled):
        cascade.segment_cascade(image, Threshold(), fine, params, progress=lambda d, t: progress.append(d),
                                should_stop=should_stop)
    assert calls == [2] and progress == [1, 2] and len(polls) == 3
