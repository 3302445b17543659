"""Weak labels from full masks (strokes, boxes, points, dense subset) and the synthetic generators."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medloop.app.errors import MedloopError
from medloop.plugins.correction import synth
from medloop.plugins.correction.weaklabels import (
    AnnotationError,
    boxes,
    dense_subset,
    points,
    strokes,
)


def quadrants(size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), np.int64)
    mask[:, size // 2 :] = 1
    mask[size // 2 :, : size // 2] = 2
    mask[size // 2 :, size // 2 :] = 3
    return mask


def test_annotation_error_is_a_medloop_value_error():
    assert issubclass(AnnotationError, MedloopError) and issubclass(AnnotationError, ValueError)


# --- strokes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("coverage", [0.01, 0.03, 0.05])
def test_strokes_reach_the_requested_coverage(coverage):
    for seed in range(4):
        mask = synth.texture_mosaic(seed).semantic
        labels, reached = strokes(mask, coverage, margin=3, per_class_counts=(3, 2, 2, 1), rng=seed)
        assert reached == np.count_nonzero(labels) / labels.size
        assert abs(reached - coverage) <= 0.1 * coverage, (seed, reached)


def test_strokes_stay_margin_inside_their_region_and_carry_its_class():
    for seed in range(6):
        mask = synth.texture_mosaic(seed).semantic
        for margin in (0, 2, 3):
            labels, _ = strokes(mask, 0.05, margin, rng=seed)
            painted = labels > 0
            assert np.array_equal(labels[painted] - 1, mask[painted])  # paint convention k + 1
            for k in np.unique(mask):
                inside = ndimage.distance_transform_edt(mask == k) if (mask != k).any() else np.full(mask.shape, np.inf)
                assert np.all(inside[labels == k + 1] > margin), (seed, margin, k)


def test_per_class_counts_set_each_class_share():
    labels, _ = strokes(quadrants(), 0.05, 3, per_class_counts=(3, 2, 2, 1), rng=1)
    share = np.bincount(labels.ravel(), minlength=5)[1:] / np.count_nonzero(labels)
    np.testing.assert_allclose(share, [3 / 8, 2 / 8, 2 / 8, 1 / 8], atol=0.01)
    only_two, _ = strokes(quadrants(), 0.02, 3, per_class_counts={0: 1, 2: 1}, rng=1)
    assert set(np.unique(only_two)) == {0, 1, 3}


def test_a_class_without_room_passes_its_share_on():
    mask = quadrants()
    mask[2:8, 2:8] = 4  # 6x6 island: no 3-px footprint fits more than 3 px inside it
    labels, reached = strokes(mask, 0.04, 3, rng=0)
    assert not np.any(labels == 5) and set(np.unique(labels)) == {0, 1, 2, 3, 4}
    assert abs(reached - 0.04) <= 0.004


def test_strokes_are_strokes_not_scattered_dots():
    labels, _ = strokes(quadrants(), 0.05, 3, per_class_counts=(2, 2, 2, 2), rng=3)
    for k in range(1, 5):
        n_parts = ndimage.label(labels == k)[1]
        assert 1 <= n_parts <= 4
        # 3 px wide: most stroke pixels have a full 3x3 neighbourhood of the stroke or its edge.
        core = ndimage.binary_erosion(labels == k, np.ones((3, 3)))
        assert core.sum() >= 0.1 * (labels == k).sum()


def test_strokes_are_reproducible_per_seed_and_validate_input():
    mask = synth.texture_mosaic(5).semantic
    a, ca = strokes(mask, 0.05, 3, (3, 2, 2, 1), rng=7)
    b, cb = strokes(mask, 0.05, 3, (3, 2, 2, 1), rng=np.random.default_rng(7))
    c, _ = strokes(mask, 0.05, 3, (3, 2, 2, 1), rng=8)
    assert np.array_equal(a, b) and ca == cb and not np.array_equal(a, c)
    assert np.array_equal(strokes(mask)[0], strokes(mask)[0])  # default seed
    with pytest.raises(ValueError, match="coverage"):
        strokes(mask, 0.0)
    with pytest.raises(ValueError, match="2-D"):
        strokes(np.zeros((2, 8, 8), int))
    with pytest.raises(ValueError, match="integer"):
        strokes(np.zeros((8, 8)))


# --- boxes, points, dense subset ------------------------------------------------------------------


def test_boxes_are_find_objects():
    inst = np.zeros((20, 30), np.int32)
    inst[2:5, 3:9] = 1
    inst[10:18, 20:22] = 4  # ids 2, 3 absent
    inst[6, 6] = 5
    assert boxes(inst) == ndimage.find_objects(inst)
    assert boxes(inst)[0] == (slice(2, 5), slice(3, 9)) and boxes(inst)[1] is None
    sample = synth.glomeruli(3)
    assert boxes(sample.instances) == ndimage.find_objects(sample.instances)
    # A boolean mask: one box per connected component.
    assert boxes(inst > 0) == ndimage.find_objects(ndimage.label(inst > 0)[0])


def test_points_are_rounded_centroids():
    inst = np.zeros((20, 20), np.int32)
    inst[2:5, 3:6] = 1  # centre (3, 4)
    inst[10:12, 10:12] = 3  # centre (10.5, 10.5) -> halves round up
    assert points(inst).tolist() == [[3, 4], [11, 11]]
    sample = synth.nuclei(2)
    ids = np.unique(sample.instances)[1:]
    expected = np.floor(np.array(ndimage.center_of_mass(np.ones_like(sample.instances), sample.instances, ids)) + 0.5)
    assert np.array_equal(points(sample.instances), expected)
    assert points(np.zeros((5, 5), int)).shape == (0, 2)
    assert points(np.zeros((3, 5, 5), bool)).shape == (0, 3)


def test_dense_subset():
    labels = [np.zeros((4, 4))] * 10
    chosen = dense_subset(labels, 0.2, rng=3)
    assert len(chosen) == 2 and chosen == sorted(set(chosen)) and all(0 <= i < 10 for i in chosen)
    assert chosen == dense_subset(labels, 0.2, rng=3)
    assert dense_subset(labels, 0.0) == [] and len(dense_subset(labels, 0.01)) == 1
    assert dense_subset(labels, 1.0) == list(range(10))


# --- synthetic generators -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mosaic", "nuclei", "glomeruli", "tiny_blobs"])
def test_generators_are_seeded_and_well_formed(kind):
    samples = synth.dataset(kind, 5, seed=2)
    again = synth.dataset(kind, 6, seed=2)[:5]  # more samples only append
    for s, t in zip(samples, again):
        assert np.array_equal(s.image, t.image) and np.array_equal(s.instances, t.instances)
        assert s.image.dtype == np.float32 and s.image.ndim == 3 and s.image.shape[1:] == (64, 64)
        assert s.image.min() >= 0 and s.image.max() <= 1
        assert s.semantic.shape == s.instances.shape == (64, 64)
        if kind != "mosaic":
            assert np.array_equal(s.semantic, (s.instances > 0).astype(np.int64))
    assert not np.array_equal(samples[0].image, samples[1].image)


def test_mosaic_regions_and_classes():
    for seed in range(10):
        s = synth.texture_mosaic(seed, num_classes=4)
        assert 2 <= s.instances.max() <= 4 and s.semantic.max() < 4
        for region in range(1, s.instances.max() + 1):  # one class per region
            assert len(np.unique(s.semantic[s.instances == region])) == 1
    assert synth.texture_mosaic(0, channels=1).image.shape == (1, 64, 64)


def test_nuclei_sizes_and_some_touching():
    touching = 0
    for seed in range(10):
        s = synth.nuclei(seed)
        inst = s.instances
        areas = np.bincount(inst.ravel())[1:]
        assert 8 <= len(areas) <= 14 and areas.max() <= np.pi * 5 * 5 + 4
        assert np.median(areas) >= np.pi * 2.5 * 2.5 * 0.8
        # nuclei are darker than the stroma
        assert s.image[:, inst > 0].mean() < s.image[:, inst == 0].mean() - 0.3
        for a, b in ((inst[:, :-1], inst[:, 1:]), (inst[:-1], inst[1:])):
            touching += int(np.any((a > 0) & (b > 0) & (a != b)))
    assert touching >= 3


def test_glomeruli_and_tiny_blobs_statistics():
    for seed in range(8):
        g = synth.glomeruli(seed)
        assert 1 <= g.instances.max() <= 3
    blobs = synth.dataset("tiny_blobs", 60, seed=1)
    fg = np.mean([b.semantic.mean() for b in blobs])
    empty = np.mean([b.instances.max() == 0 for b in blobs])
    assert 0.003 <= fg <= 0.012 and 0.08 <= empty <= 0.35
    assert all(b.instances.max() <= 3 for b in blobs)
