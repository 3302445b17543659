"""Gupta et al.'s translator patches: crop rule, healthy partners, the 0.15 'no bone' filter."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.plugins.lesions.checks import LesionInputError
from medloop.plugins.lesions.patches import MIN_PATCH_MEAN, _crop_for_box, lesion_crops, translator_patches
from medloop.plugins.lesions.phantoms import Phantom, phantom_set


def _phantom(image: np.ndarray, boxes=()) -> Phantom:
    mask = np.zeros(image.shape, bool)
    return Phantom(image.astype(np.float32), mask, image.astype(np.float32), mask, list(boxes), "bone", 0)


def test_crop_rule_square_contains_box_inside_image_and_seeded():
    rng = np.random.default_rng(0)
    shape = (64, 128)
    seen = set()
    for _ in range(500):
        h, w = rng.integers(4, 20, size=2)
        y0, x0 = int(rng.integers(0, shape[0] - h + 1)), int(rng.integers(0, shape[1] - w + 1))
        box = (y0, x0, y0 + int(h), x0 + int(w))
        for s in (1, 2):
            crop = _crop_for_box(box, shape, s, rng)
            side = round(s * max(h, w))
            if crop is None:  # only when no placement fits
                assert side > shape[0] or max(0, box[2] - side) > min(box[0], shape[0] - side)
                continue
            cy, cx, got = crop
            assert got == side
            assert cy <= box[0] and cx <= box[1] and cy + side >= box[2] and cx + side >= box[3]
            assert cy >= 0 and cx >= 0 and cy + side <= shape[0] and cx + side <= shape[1]
            seen.add((s, cy - box[0], cx - box[1]))
    assert len(seen) > 100  # the placement is random, not always the same offset
    a = [_crop_for_box((10, 20, 22, 30), shape, 2, np.random.default_rng(5)) for _ in range(2)]
    assert a[0] == a[1]
    assert _crop_for_box((0, 0, 40, 40), shape, 2, np.random.default_rng(0)) is None  # 80 px > 64 px


def test_bone_patches_shapes_filter_and_seed():
    lesion = phantom_set("bone", 6, seed=1, lesion_fraction=1.0)
    healthy = phantom_set("bone", 20, seed=2, lesion_fraction=0.0)
    h, l = translator_patches(lesion, healthy, s=[1, 2], n=4, size=32, seed=3, crops=2)
    n_crops = len(lesion_crops(lesion, [1, 2], np.random.default_rng(3), 2))
    assert l.shape == (n_crops, 32, 32) and h.shape[1:] == (32, 32) and h.dtype == np.float32
    assert 0 < len(h) <= 4 * n_crops
    assert h.mean(axis=(1, 2)).min() >= MIN_PATCH_MEAN - 0.01  # resizing moves the mean a little
    h2, l2 = translator_patches(lesion, healthy, s=[1, 2], n=4, size=32, seed=3, crops=2)
    assert np.array_equal(h, h2) and np.array_equal(l, l2)
    h3, _ = translator_patches(lesion, healthy, s=[1, 2], n=4, size=32, seed=4, crops=2)
    assert h3.shape != h.shape or not np.array_equal(h, h3)


def test_soft_tissue_only_patch_is_dropped():
    image = np.full((64, 64), 0.5, np.float32)
    lesion = _phantom(image, [(8, 8, 16, 16)])
    dark = np.full((64, 64), 0.5, np.float32)
    dark[:24, :24] = 0.1  # soft tissue where the crop lands (any s=1 or s=2 crop lies in [0, 24))
    bright = np.full((64, 64), 0.6, np.float32)
    h, l = translator_patches([lesion], [_phantom(dark), _phantom(bright)], s=[1, 2], n=2, size=16, seed=0)
    assert l.shape == (2, 16, 16)
    assert h.shape == (2, 16, 16) and np.allclose(h, 0.6)  # both dark partner crops dropped


def test_bad_patch_inputs():
    ph = phantom_set("bone", 2, seed=0, lesion_fraction=1.0)
    with pytest.raises(LesionInputError, match="choose 1 or 2"):
        translator_patches(ph, ph, s=3)
    with pytest.raises(LesionInputError, match="n = 5 healthy partners"):
        translator_patches(ph, ph, n=5)
    with pytest.raises(LesionInputError, match="need lesion and healthy images"):
        translator_patches([], ph)
