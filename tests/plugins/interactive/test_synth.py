"""The synthetic click-net data: seeded, one component of one label, held-out objects kept out."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medloop.plugins.interactive import synth


@pytest.fixture(scope="module")
def tissue():
    return synth.mni_tissue()


def _same(a: synth.SynthObject, b: synth.SynthObject) -> bool:
    return (a.family == b.family and a.label == b.label and np.array_equal(a.image, b.image)
            and np.array_equal(a.labels, b.labels) and np.array_equal(a.target, b.target))


def test_same_seed_same_objects_and_another_seed_differs(tissue):
    first = [synth.synth_object(np.random.default_rng(7), tissue=tissue) for _ in range(1)]
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    a = [synth.synth_object(rng_a, tissue=tissue) for _ in range(6)]
    b = [synth.synth_object(rng_b, tissue=tissue) for _ in range(6)]
    assert all(_same(x, y) for x, y in zip(a, b))
    assert not _same(first[0], a[0])
    assert [_same(x, y) for x, y in zip(synth.heldout_tubes(3), synth.heldout_tubes(3))] == [True] * 3


def test_targets_are_one_component_of_one_label_spanning_4_to_64_px(tissue):
    rng = np.random.default_rng(11)
    objects = [synth.synth_object(rng, tissue=tissue) for _ in range(60)]
    assert {o.family for o in objects} == set(synth.TRAIN_FAMILIES)  # tubes are never drawn in training
    extents = []
    for o in objects:
        assert o.image.shape == o.target.shape == (synth.SIZE, synth.SIZE) and o.image.dtype == np.float32
        assert np.all(o.labels[o.target] == o.label) and o.label != 0
        assert ndimage.label(o.target)[1] == 1 and o.target.sum() >= synth.MIN_TARGET_PX
        extents.append(int(np.ptp(np.argwhere(o.target), axis=0).max()) + 1)
    assert min(extents) >= 3 and max(extents) <= 64 and 8 <= np.median(extents) <= 40
    # random contrast: the target's mean intensity is not a fixed level
    means = [float(o.image[o.target].mean()) for o in objects]
    assert np.std(means) > 0.15


def test_mni_ventricles_and_inner_csf_are_background_and_never_targets(tissue):
    axial = tissue[45]
    ventricle = synth.ventricle_mask(axial)
    assert ventricle.sum() > 50  # the lateral ventricles on this slice
    split = synth.split_mni_slice(axial, np.random.default_rng(0), midline=49)
    assert np.all(split[ventricle] == 0) and len(np.unique(split[axial > 0])) >= 4
    rng = np.random.default_rng(5)
    mni = [synth.synth_object(rng, "mni", tissue) for _ in range(40)]
    assert all(not (o.target & o.never).any() for o in mni) and sum(o.never.any() for o in mni) >= 20
    assert all(np.all(o.labels[o.never] == 0) for o in mni)


def test_heldout_real_slices_are_enclosed_ventricles():
    objects = synth.mni_ventricle_slices()
    assert [o.name.split()[0] for o in objects] == ["axial"] * 4 + ["coronal"] * 3
    for o in objects:
        assert o.spacing == (2.0, 2.0) and o.image.shape == o.target.shape
        assert ndimage.label(o.target)[1] == 1 and o.target.sum() >= 50
        assert not (o.target[0].any() or o.target[-1].any() or o.target[:, 0].any() or o.target[:, -1].any())
        assert o.image[o.target].mean() < o.image[ndimage.binary_dilation(o.target, iterations=3) & ~o.target].mean()  # CSF dark on T1
