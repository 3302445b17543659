"""The Axon tracking panel's Qt-free state: per-vertex entropy, what counts as an edit, the
autosave document and store, tracker versions, fine-tuning's guards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medloop.app.engine.jobs import JobCancelled
from medloop.app.io.autosave import inside_package
from medloop.app.io.image import MedImage
from medloop.plugins.axons import session as ses
from medloop.plugins.axons.checks import TracingInputError
from medloop.plugins.axons.nets import Actor
from medloop.plugins.axons.sample import TRUTH_NAME, axon_sample_layers, sample_axons
from medloop.plugins.axons.trace import Trace


def traced(n=5):
    v = np.stack([np.full(n, 10.0), 10.0 + 2.5 * np.arange(n)], axis=1)
    return ses.traced_from(Trace(v, -np.arange(1.0, n), "border", 0))


def test_every_vertex_gets_the_entropy_of_its_step():
    np.testing.assert_allclose(ses.vertex_entropy(4, [-1.0, -2.0, -3.0]), [-1, -2, -3, -3])
    np.testing.assert_allclose(ses.vertex_entropy(3, [-1.0, -2.0, -3.0]), [-1, -2, -3])  # entropy stop: N steps
    assert np.isnan(ses.vertex_entropy(1, [])).all()


def test_edits_are_told_from_the_trackers_path_and_drop_moved_vertices_entropy():
    t = traced()
    same, moved, shorter = t.vertices.copy(), t.vertices.copy(), t.vertices[:3]
    moved[2] += [1.5, 0.0]
    assert not ses.is_edited(same, t) and ses.is_edited(moved, t) and ses.is_edited(shorter, t) and ses.is_edited(same, None)
    pts, ent, ids = ses.entropy_points([moved, np.zeros((2, 2))], [0, -1], {0: t})
    assert len(pts) == 4 and not np.any(np.all(np.isclose(pts, t.vertices[2]), axis=1)) and set(ids) == {0}
    feats = ses.trace_features([same, moved[:2]], [0, -1], {0: t})
    assert feats["stop_reason"] == ["border", "drawn"] and feats["edited"] == [False, True] and feats["n_steps"] == [4, 1]
    assert feats["mean_entropy"][0] == pytest.approx(-2.5) and np.isnan(feats["mean_entropy"][1])
    assert len(ses.corrected_paths([same, moved], [0, 0], {0: t})) == 1


def test_document_round_trip_and_store_keyed_by_pixels(tmp_path):
    t = traced()
    doc = ses.traces_document((64, 64), [t.vertices], [0], {0: t}, {0: t.vertices[0]})
    state = ses.read_traces_document(doc, (64, 64))
    np.testing.assert_allclose(state.paths[0], t.vertices)
    np.testing.assert_allclose(state.traced[0].entropy, t.entropy)
    assert state.seed_ids == [0] and state.traced[0].stop_reason == "border"
    with pytest.raises(Exception, match="64, 64"):
        ses.read_traces_document(doc, (32, 32))
    image = MedImage.from_array(np.zeros((64, 64), np.float32))
    a, b = ses.TraceStore(tmp_path, "aaaa"), ses.TraceStore(tmp_path, "bbbb")
    assert a.table_path_for(image, "axon traces") != b.table_path_for(image, "axon traces")  # same size, other pixels
    import json

    a.save_table(image, "axon traces", np.array(json.dumps(doc)))
    assert a.load_traces(image, "axon traces", (64, 64)).seed_ids == [0] and b.load_traces(image, "axon traces", (64, 64)) is None
    assert not inside_package(ses.TraceStore.for_image(image).folder)


def test_versions_save_and_roll_back(tmp_path):
    versions = ses.TrackerVersions(tmp_path, "base-tracker")
    assert versions.list() == [] and versions.current == 0
    torch.manual_seed(0)
    assert versions.save(Actor(), {"coverage_after": 80.0}) == 1 and versions.save(Actor(), {}) == 2
    assert versions.list() == [1, 2] and versions.current == 2 and versions.info(2)["parent"] == 1
    versions.rollback(0)
    assert versions.current == 0 and versions.list() == [1, 2]  # nothing deleted
    with pytest.raises(Exception, match="no version v7"):
        versions.rollback(7)


def test_fine_tune_refuses_bad_paths_and_a_cancel_keeps_the_actor():
    image = sample_axons(64, 1)[0]
    with pytest.raises(TracingInputError, match="no corrected path"):
        ses.fine_tune(Actor(), image, [])
    with pytest.raises(TracingInputError, match="ground-truth path 0 has 1 vertex"):
        ses.fine_tune(Actor(), image, [np.array([[5.0, 5.0]])])
    actor = Actor()
    before = {k: v.clone() for k, v in actor.state_dict().items()}
    path = np.stack([np.full(12, 30.0), np.linspace(5, 50, 12)], axis=1)
    with pytest.raises(JobCancelled):
        ses.fine_tune(actor, image, [path], ses.FineTuneParams(iterations=3), should_stop=lambda: True)
    assert all(torch.equal(before[k], v) for k, v in actor.state_dict().items())
    assert ses.steps_for([path]) == 34  # 3 x 45 px / 4 px


def test_the_sample_is_an_image_with_its_true_centrelines():
    (image, image_kwargs, kind), (truth, truth_kwargs, truth_kind) = axon_sample_layers()
    assert kind == "image" and image.shape == (128, 128) and image.dtype == np.float32
    assert truth_kind == "shapes" and truth_kwargs["name"] == TRUTH_NAME and truth_kwargs["shape_type"] == "path"
    assert len(truth) == 3 and all(len(t) > 100 for t in truth)
    again, _ = sample_axons()
    np.testing.assert_array_equal(image, again)  # seeded: the same image every time (autosave finds it)
