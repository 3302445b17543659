"""PromptSession and the classical engine: spec §7 check 1 (engine, compute tier) and the guard."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.app.io.image import MedImage
from medloop.plugins.interactive.evaluation import dice
from medloop.plugins.interactive.params import InteractiveParams
from medloop.plugins.interactive.prompts import Point, PromptError, index_to_physical
from medloop.plugins.interactive.session import PromptSession

SPACING = (1.0, 1.0, 1.0)


def _ball(shape, centre, radius):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g - c) ** 2 for g, c in zip(grids, centre)) <= radius**2


def _image(array, spacing=SPACING):
    return MedImage.from_array(array.astype(np.float32), spacing=spacing[: array.ndim], origin=(-10.0, 5.0, 2.0)[: array.ndim])


def _click(image, index, positive=True):
    return Point(tuple(float(v) for v in index_to_physical(image, np.asarray(index))[0]), positive)


def _classical(**kw):
    return InteractiveParams(engine="classical", **kw)


def test_one_click_at_a_sphere_in_noise_snr3_gives_dice_090():
    rng = np.random.default_rng(0)
    shape, centre = (64, 64, 64), (32, 30, 33)
    truth = _ball(shape, centre, 10)
    image = _image(3.0 * truth + rng.normal(0.0, 1.0, shape))
    session = PromptSession(image, None, _classical())
    session.add(_click(image, centre))
    assert dice(session.object_mask(), truth) >= 0.90


def _two_spheres_and_a_bridge(rng):
    shape = (48, 48, 80)
    a, b = _ball(shape, (24, 24, 18), 9), _ball(shape, (24, 24, 58), 9)
    bridge = np.zeros(shape, bool)
    bridge[23:25, 23:25, 18:58] = True  # 2 x 2 voxels thin
    return shape, a, b | (bridge & ~a)


def test_a_negative_click_cuts_a_leak_through_a_thin_bridge_and_adds_nothing():
    rng = np.random.default_rng(1)
    shape, a, leak = _two_spheres_and_a_bridge(rng)
    image = _image(10.0 * (a | leak) + rng.normal(0.0, 1.0, shape))
    session = PromptSession(image, None, _classical())
    session.add(_click(image, (24, 24, 18)))
    before = session.object_mask()
    fp_before = int((before & ~a).sum())
    assert fp_before > 0.8 * leak.sum()  # the first click leaked through the bridge
    update = session.add(_click(image, (24, 24, 58), positive=False))
    after = session.object_mask()
    assert not (after & ~before).any()
    assert int((after & ~a).sum()) <= 0.5 * fp_before
    assert dice(after & a, a) >= 0.95 and update.changed == int((before & ~after).sum())


def test_undo_restores_bit_for_bit_and_k_undos_then_k_redos_give_the_same_mask():
    rng = np.random.default_rng(2)
    shape, a, leak = _two_spheres_and_a_bridge(rng)
    image = _image(10.0 * (a | leak) + rng.normal(0.0, 1.0, shape))
    labels = np.zeros(shape, np.uint16)
    labels[:4] = 7  # another class, far away
    session = PromptSession(image, labels, _classical(label=3))
    states = [labels.copy()]
    for index, positive in (((24, 24, 18), True), ((24, 24, 58), False), ((24, 24, 58), True)):
        session.add(_click(image, index, positive))
        states.append(labels.copy())
    assert all(not np.array_equal(x, y) for x, y in zip(states, states[1:]))  # every click changed something
    for k in range(3, 0, -1):
        session.undo()
        assert np.array_equal(labels, states[k - 1])
    for k in range(1, 4):
        session.redo()
        assert np.array_equal(labels, states[k])


def test_no_voxel_outside_the_roi_changes_and_locked_classes_never_change():
    rng = np.random.default_rng(3)
    shape = (40, 96, 96)
    truth = np.zeros(shape, bool)
    truth[10:30, 10:86, 10:86] = True  # a slab larger than the first 48 mm ROI: it must grow
    image = _image(5.0 * truth + rng.normal(0.0, 0.5, shape), spacing=(1.0, 1.0, 2.0))
    labels = np.zeros(shape, np.uint16)
    labels[15:25, 40:56, 40:44] = 2  # another class inside the slab
    labels[0:5, 0:5, 0:5] = 9
    session = PromptSession(image, labels.copy(), _classical(label=1))
    update = session.add(_click(image, (20, 20, 20)))
    out = session.labels
    roi = update.roi
    outside = np.ones(shape, bool)
    outside[roi] = False
    assert np.array_equal(out[outside], labels[outside])
    assert np.array_equal(out[labels == 2], labels[labels == 2]) and np.array_equal(out[labels == 9], labels[labels == 9])
    assert dice(out == 1, truth & (labels == 0)) >= 0.95  # the ROI grew to take the whole slab
    assert update.info["roi_voxels"] > (48 // 1) * (48 // 1) * (48 // 2)


def test_a_positive_click_on_existing_foreground_changes_nothing_and_says_so():
    rng = np.random.default_rng(4)
    shape, centre = (40, 40, 40), (20, 20, 20)
    truth = _ball(shape, centre, 8)
    image = _image(4.0 * truth + rng.normal(0.0, 0.5, shape))
    session = PromptSession(image, None, _classical())
    session.add(_click(image, centre))
    before = session.labels.copy()
    update = session.add(_click(image, (20, 22, 20)))
    assert update.changed == 0 and np.array_equal(session.labels, before)
    assert update.message == "the click is already inside the object: nothing changed (click where the object is missing)"
    negative = session.add(_click(image, (2, 2, 2), positive=False))
    assert negative.changed == 0 and negative.message.startswith("the click is already outside the object")


def test_a_click_outside_the_image_is_one_clear_error():
    image = _image(np.zeros((10, 12, 14)))
    session = PromptSession(image, None, _classical())
    with pytest.raises(PromptError, match=r"^the point \(100, 5, 2\) mm lies outside the image"):
        session.add(Point((100.0, 5.0, 2.0)))


def test_the_growth_guard_holds_a_step_back_until_confirmed():
    rng = np.random.default_rng(5)
    shape = (32, 64, 64)
    small, big = _ball(shape, (16, 16, 16), 4), np.zeros(shape, bool)
    big[4:28, 30:62, 4:60] = True
    image = _image(np.where(small, 10.0, np.where(big, 6.0, 0.0)) + rng.normal(0.0, 0.3, shape))
    session = PromptSession(image, None, _classical())
    session.add(_click(image, (16, 16, 16)))
    held = session.add(_click(image, (16, 45, 30)))  # a positive click in a much larger structure
    assert held.changed == 0 and held.info["needs_confirmation"] and held.message.startswith("guard: the object would grow")
    assert session.object_voxels == int(small.sum()) or abs(session.object_voxels - small.sum()) < 0.1 * small.sum()
    confirmed = session.confirm()
    assert confirmed.changed > 5 * small.sum()


def test_labels_on_another_grid_are_refused():
    image = _image(np.zeros((10, 12, 14)))
    with pytest.raises(PromptError, match=r"^the target labels have shape \(10, 12, 15\) but the image \(10, 12, 14\)"):
        PromptSession(image, np.zeros((10, 12, 15), np.uint8), _classical())


def test_a_box_on_one_slice_of_a_volume_and_a_2d_box_give_the_object():
    from medloop.plugins.interactive.prompts import Box

    rng = np.random.default_rng(6)
    shape, centre = (40, 64, 64), (20, 30, 32)
    truth = _ball(shape, centre, 10)
    image = _image(3.0 * truth + rng.normal(0.0, 1.0, shape))
    corner = lambda idx: tuple(float(v) for v in index_to_physical(image, np.asarray(idx))[0])
    session = PromptSession(image, None, _classical())
    update = session.add(Box((corner((20, 18, 20)), corner((20, 42, 44))), plane=0))
    assert update.info["method"] == "graph-cut"
    assert dice(session.object_mask()[20], truth[20]) >= 0.97 and dice(session.object_mask(), truth) >= 0.95
    flat = _image(3.0 * truth[20] + rng.normal(0.0, 1.0, shape[1:]))
    corner2 = lambda idx: tuple(float(v) for v in index_to_physical(flat, np.asarray(idx))[0])
    session2 = PromptSession(flat, None, _classical())
    session2.add(Box((corner2((18, 20)), corner2((42, 44)))))
    assert dice(session2.object_mask(), truth[20]) >= 0.97


def test_scribbles_start_an_object_and_a_negative_scribble_only_removes():
    from medloop.plugins.interactive.prompts import Scribble

    rng = np.random.default_rng(7)
    truth = np.zeros((64, 64), bool)
    truth[16:48, 12:40] = True
    bridge = np.zeros_like(truth)
    bridge[30:32, 40:50] = True
    blob = np.zeros_like(truth)
    blob[24:40, 50:60] = True
    image = _image(4.0 * (truth | bridge | blob) + rng.normal(0.0, 0.7, truth.shape))
    point = lambda idx: tuple(float(v) for v in index_to_physical(image, np.asarray(idx))[0])
    session = PromptSession(image, None, _classical())
    session.add(Scribble(tuple(point((32, c)) for c in range(18, 34)), positive=True))
    before = session.object_mask()
    assert before[blob].mean() > 0.9  # the local threshold leaked through the bridge
    update = session.add(Scribble(tuple(point((r, 55)) for r in range(26, 38)), positive=False))
    after = session.object_mask()
    assert update.info["method"] == "watershed" and not (after & ~before).any()
    assert after[blob].mean() < 0.1 and dice(after & truth, truth) >= 0.95
