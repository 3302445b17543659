"""Box training (spec section 2, Gupta et al.): Stage 2 (Cues 2) and multi-image Stage 1.

Fast tests drive ``run_boxes_many`` with a fake network and a forced prediction (so exactly
which objects Cues 2 must drop is known); the others train a real tiny U-Net for a few steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from dataclasses import replace as dc_replace

import numpy as np
import pytest
import torch
from skimage.draw import ellipse

from medloop.app.engine.jobs import JobCancelled
from medloop.plugins.correction import box_training, synth
from medloop.plugins.correction.box_training import (
    run_boxes,
    run_boxes_many,
    stage1_objects,
)
from medloop.plugins.correction.boxes import (
    BoxError,
    boxes_from_instances,
    cues2_bounds,
)
from medloop.plugins.correction.headless import run_weak

H = W = 64


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


# ------------------------------------------------------------------- fake network + prediction


class FakeNet(torch.nn.Module):
    """Carries how many trainings produced it; the forced prediction may depend on that."""

    def __init__(self, n: int = 0):
        super().__init__()
        self.n = n


@dataclass
class FakeResult:
    network: FakeNet
    metrics: dict = field(default_factory=dict)


class FakeTrain:
    """``train_many`` stand-in: records each call's label maps, returns a net one generation on."""

    def __init__(self):
        self.calls: list[list[tuple[np.ndarray, np.ndarray]]] = []

    def __call__(self, net, pairs, seed):
        self.calls.append([(np.asarray(x), np.asarray(lab).copy()) for x, lab in pairs])
        return FakeResult(FakeNet(net.n + 1), {"epochs_done": 1})


def image(ident: float) -> np.ndarray:
    """A (1, H, W) input identified by its constant value."""
    return np.full((1, H, W), ident, np.float32)


def ellipse_mask(r, c, a, b, rot=0.0) -> np.ndarray:
    m = np.zeros((H, W), bool)
    rr, cc = ellipse(r, c, a, b, shape=(H, W), rotation=rot)
    m[rr, cc] = True
    return m


def stage1_instances() -> np.ndarray:
    """Nine well separated ellipses, semi-axes 4-5 (areas ~50-80 px, eccentricity 0-0.6)."""
    inst = np.zeros((H, W), np.int32)
    k = 0
    for i, r in enumerate((10, 32, 54)):
        for j, c in enumerate((10, 32, 54)):
            k += 1
            a = 4.0 + 0.5 * ((i + j) % 3)
            b = 4.0 + 0.5 * (i % 2)
            inst[ellipse_mask(r, c, a, b, rot=0.3 * k)] = k
    return inst


STAGE1 = stage1_instances()
NORMAL = STAGE1 == 5  # the centre object: median size and shape


def shifted(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    return np.roll(np.roll(mask, dy, axis=0), dx, axis=1)


def unlabeled_prediction() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction, objects that must be kept, objects that must be dropped)."""
    keep = shifted(NORMAL, -20, -20) | shifted(NORMAL, 20, 20)  # exact copies: inside bounds
    huge = ellipse_mask(12, 50, 9, 9)  # area ~250 px
    tiny = np.zeros((H, W), bool)
    tiny[50, 10] = tiny[50, 11] = True  # area 2
    needle = np.zeros((H, W), bool)
    needle[40:42, 30:46] = True  # area 32, eccentricity ~1
    drop = huge | tiny | needle
    return keep | drop, keep, drop


def force(monkeypatch, table):
    """predict_labels -> table[image id](net) (class 1 = foreground)."""

    def fake_predict(net, x):
        return table[float(np.asarray(x).flat[0])](net).astype(np.int64)

    monkeypatch.setattr(box_training, "predict_labels", fake_predict)


# ---------------------------------------------------------------------------- stage 2 (Cues 2)


def test_stage2_drops_out_of_bounds_objects_as_unlabeled(monkeypatch):
    pred, keep, drop = unlabeled_prediction()
    force(monkeypatch, {1.0: lambda net: STAGE1 > 0, 2.0: lambda net: pred})
    train = FakeTrain()
    boxes = boxes_from_instances(STAGE1)
    run = run_boxes_many(FakeNet(), [image(1.0)], [boxes], train, rounds=4, unlabeled=[image(2.0)])
    # Stage 1: boxes, then the (constant) prediction: the second round changes nothing -> stop.
    assert run.metrics["rounds_done"] == 2 and run.metrics["auto_stopped"]
    s2 = run.metrics["stage2"]
    assert s2["rounds_done"] == 1 and s2["auto_stopped"] and s2["changed_fraction"] == [0.0]
    assert s2["rounds"][0]["objects_kept"] == 2 and s2["rounds"][0]["objects_dropped"] == 3
    # The stage-2 training call: the Stage-1 image with its final Cues-1 labels, plus the unlabeled one.
    (x1, lab1), (x2, pl) = train.calls[-1]
    assert x1.flat[0] == 1.0 and x2.flat[0] == 2.0
    np.testing.assert_array_equal(lab1, np.where(STAGE1 > 0, 2, 1))
    np.testing.assert_array_equal(pl, np.where(keep, 2, np.where(drop, 0, 1)))
    assert [r["stage"] for r in run.rounds] == [1, 1, 2]
    assert isinstance(run.labels, list) and len(run.labels) == 1


def test_stage2_auto_stops_when_pseudo_labels_settle(monkeypatch):
    # Stage 1 takes 2 trainings (net.n = 2 after it); the unlabeled prediction moves its object
    # for nets 2, 3, 4 and stays put from then on.
    positions = {2: (-20, -20), 3: (0, -20), 4: (20, -20)}
    force(monkeypatch, {
        1.0: lambda net: STAGE1 > 0,
        2.0: lambda net: shifted(NORMAL, *positions.get(net.n, (20, -20))),
    })
    boxes = boxes_from_instances(STAGE1)
    run = run_boxes_many(FakeNet(), [image(1.0)], [boxes], FakeTrain(), rounds=3, unlabeled=[image(2.0)])
    s2 = run.metrics["stage2"]
    assert s2["rounds_done"] == 3 and s2["auto_stopped"]
    assert all(f > 0.01 for f in s2["changed_fraction"][:2]) and s2["changed_fraction"][2] == 0.0
    assert all(r["objects_kept"] == 1 and r["objects_dropped"] == 0 for r in s2["rounds"])
    # A round limit stops it first.
    run = run_boxes_many(FakeNet(), [image(1.0)], [boxes], FakeTrain(), rounds=3, unlabeled=[image(2.0)],
                         stage2_rounds=2)
    assert run.metrics["stage2"]["rounds_done"] == 2 and not run.metrics["stage2"]["auto_stopped"]
    # auto_stop=None: every round of both stages runs (the paper's fixed schedule).
    run = run_boxes_many(FakeNet(), [image(1.0)], [boxes], FakeTrain(), rounds=3, unlabeled=[image(2.0)],
                         auto_stop=None)
    assert run.metrics["rounds_done"] == 3 and run.metrics["stage2"]["rounds_done"] == 5
    assert run.metrics["changed_fraction"][1:] == [0.0, 0.0] and not run.metrics["auto_stopped"]


def test_bx5_bounds_come_from_stage1_images_only(monkeypatch):
    pred, _, _ = unlabeled_prediction()
    big = ellipse_mask(32, 32, 20, 12)
    # A stray blob outside every box in the stage-1 prediction must not enter the statistics.
    stray = np.zeros((H, W), bool)
    stray[0:3, 20:26] = True
    force(monkeypatch, {
        1.0: lambda net: (STAGE1 > 0) | stray,
        2.0: lambda net: pred,
        3.0: lambda net: big,
        4.0: lambda net: np.zeros((H, W), bool),
    })
    boxes = boxes_from_instances(STAGE1)
    expected = cues2_bounds(STAGE1 > 0)
    bounds = []
    for unl in ([image(2.0)], [image(3.0), image(4.0)], [image(4.0)]):
        run = run_boxes_many(FakeNet(), [image(1.0)], [boxes], FakeTrain(), rounds=2, unlabeled=unl)
        bounds.append(run.metrics["stage2"]["bounds"])
    assert bounds[0] == bounds[1] == bounds[2]
    assert tuple(bounds[0]["area"]) == expected.area and tuple(bounds[0]["eccentricity"]) == expected.eccentricity
    assert bounds[0]["stage1_objects"] == 9
    np.testing.assert_array_equal(stage1_objects(((STAGE1 > 0) | stray).astype(int), boxes), STAGE1 > 0)


def test_stage2_errors(monkeypatch):
    train = FakeTrain()
    with pytest.raises(BoxError, match="unlabeled image 0"):  # refused before any training
        run_boxes_many(FakeNet(), [image(1.0)], [boxes_from_instances(STAGE1)], train, rounds=1,
                       unlabeled=[np.zeros((2, H, W), np.float32)])
    assert train.calls == []
    force(monkeypatch, {1.0: lambda net: np.zeros((H, W), bool), 2.0: lambda net: STAGE1 > 0})
    with pytest.raises(BoxError, match="no objects"):
        run_boxes_many(FakeNet(), [image(1.0)], [boxes_from_instances(STAGE1)], FakeTrain(), rounds=1,
                       unlabeled=[image(2.0)])


# ------------------------------------------------------------------------- real tiny network


def tiny_net(seed: int = 0) -> torch.nn.Module:
    from medloop.models.nets import build_network

    torch.manual_seed(seed)
    return build_network("unet2d", spatial_dims=2, in_channels=3, out_channels=2, features=[4, 8], norm="group")


def small_config():
    from medloop.plugins.correction.retrain import default_fine_tune_config

    return default_fine_tune_config(epochs=2, steps_per_epoch=3, batch_size=2)


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_many_with_one_image_equals_single_image_run():
    from medloop.plugins.correction.retrain import fine_tune

    g = synth.glomeruli(4)
    boxes = boxes_from_instances(g.instances)
    cfg = small_config()
    net = tiny_net()

    def train(n, labels, seed, loss_fn=None, pairs=()):
        return fine_tune(n, [(g.image, labels)] + list(pairs), cfg, seed=seed, raise_on_stop=True)

    def train_many(n, pairs, seed):
        return fine_tune(n, list(pairs), cfg, seed=seed, raise_on_stop=True)

    single = run_boxes(net, g.image, boxes, train, seed=3, rounds=2)
    many = run_boxes_many(net, [g.image], [boxes], train_many, seed=3, rounds=2)
    assert same_state(single.network, many.network)
    np.testing.assert_array_equal(single.labels, many.labels[0])
    assert single.metrics["changed_fraction"] == many.metrics["changed_fraction"]
    # two images: one round trains on both
    g2 = synth.glomeruli(5)
    two = run_boxes_many(net, [g.image, g2.image], [boxes, boxes_from_instances(g2.instances)], train_many,
                         seed=3, rounds=1)
    assert len(two.labels) == 2 and two.annotation_counts["images"] == 2
    assert two.annotation_counts["boxes"] == len(boxes) + len(boxes_from_instances(g2.instances))


def test_run_weak_stage2_end_to_end_and_cancel_leaves_nothing(monkeypatch):
    g = synth.glomeruli(4)
    boxes = boxes_from_instances(g.instances)
    unl = [synth.glomeruli(100 + i).image for i in range(2)]
    net = tiny_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = dc_replace(small_config(), epochs=4)
    run = run_weak("boxes", g.image, boxes, net, seed=0, rounds=2, config=cfg, unlabeled=unl)
    s2 = run.metrics["stage2"]
    assert 1 <= s2["rounds_done"] <= 5 and len(s2["rounds"]) == s2["rounds_done"]
    assert s2["unlabeled_images"] == 2 and run.annotation_counts["unlabeled_images"] == 2
    assert run.labels.shape == g.semantic.shape and set(np.unique(run.labels)) <= {1, 2}
    assert run.metrics["rounds_done"] == len(run.metrics["rounds"])  # stage-1 record unchanged
    lo, hi = s2["bounds"]["area"]
    assert 0 < lo <= hi

    # Cancel once stage 1 is done (as stage 2 computes its bounds): nothing may come back.
    stop = {"now": False}
    real_bounds = box_training.cues2_bounds

    def bounds_then_cancel(*args, **kwargs):
        stop["now"] = True
        return real_bounds(*args, **kwargs)

    monkeypatch.setattr(box_training, "cues2_bounds", bounds_then_cancel)
    with pytest.raises(JobCancelled):
        run_weak("boxes", g.image, boxes, net, seed=0, rounds=2, config=cfg, unlabeled=unl,
                 should_stop=lambda: stop["now"])
    assert stop["now"]  # it was cancelled in stage 2, not before
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
