"""Axon tracking panel (viewer tier, under Xvfb): a click traces, edits autosave and come back,
3-D stacks and bad images are refused in the status line, fine-tuning makes a version that can
be rolled back, and the GUI thread never stalls while tracing or fine-tuning.

Clicks and vertex drags go through napari's own mouse bindings (the code a real click runs).
GUI-behaviour tests use an untrained actor saved to a file; the accuracy check needs a trained
tracker and uses the packaged one, failing (not skipping) while it is missing.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from medloop.app.io.autosave import inside_package
from medloop.plugins.axons import session as ses
from medloop.plugins.axons.checks import TracingInputError, check_image
from medloop.plugins.axons.synth import make_axon

pytestmark = pytest.mark.viewer
STALL_BOUND_S = 0.3


@pytest.fixture(autouse=True)
def models_folder(tmp_path, monkeypatch):
    """Fine-tuned versions go to a temporary models folder, never the tester's own."""
    from medloop.models import registry

    monkeypatch.setattr(registry, "user_models_dir", lambda: tmp_path / "models")
    return tmp_path / "models"


@pytest.fixture
def untrained(tmp_path):
    """An untrained actor saved as a file: enough for everything but accuracy."""
    from medloop.plugins.axons.nets import Actor, save_actor

    torch.manual_seed(0)
    save_actor(Actor(), tmp_path / "untrained.pt")
    return ses.tracker_from_file(tmp_path / "untrained.pt")


@pytest.fixture
def scripted():
    """A tracker that steps 2 px to the right every step (its vertices are easy to pick)."""
    from medloop.plugins.axons.nets import Actor

    class RightStepper(Actor):
        def forward(self, state):  # Beta means (0.75, 0.5): displacement (row 0, col +2) px
            return super().forward(state) * 0.0 + torch.tensor([3.0, 1.0, 2.0, 2.0])

    return ses.TrackerSource("scripted-right", RightStepper, "steps right")


def packaged_or_fail() -> ses.TrackerSource:
    source = ses.packaged_tracker()
    if source is None:
        pytest.fail(
            f"the packaged tracker is missing: {ses.PACKAGED_LOADER}.load_tracker({ses.PACKAGED_TRACKER!r}) "
            "(issue 15 item 2) is needed to check tracing accuracy in the panel")
    return source


def open_panel(viewer, qtbot, image, tracker, name="axon image"):
    from medloop.plugins.axons.widget import AxonPanel

    viewer.add_image(image, name=name)
    panel = AxonPanel(viewer, tracker=tracker)
    viewer.window.add_dock_widget(panel, name="Axon tracking", area="right")
    settle(qtbot, panel)
    return panel


def settle(qtbot, panel, timeout=120_000):
    qtbot.waitUntil(lambda: not panel.busy(), timeout=timeout)
    qtbot.wait(20)  # the job's queued layer updates


def click(layer, position):
    """A click in napari's add mode (press and release at one place)."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    layer.mode = "add"
    pos = tuple(float(v) for v in layer.data_to_world(position))
    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=pos))
    mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", position=pos))


def drag_vertex(layer, shape: int, vertex: int, to):
    """Drag one vertex of a path in direct mode, as a user does with the mouse."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks

    layer.mode = "direct"
    layer.selected_data = {shape}
    start = tuple(float(v) for v in layer.data_to_world(layer.data[shape][vertex]))
    end = tuple(float(v) for v in layer.data_to_world(to))
    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=start))
    mouse_move_callbacks(layer, read_only_mouse_event(type="mouse_move", is_dragging=True, position=end))
    mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", is_dragging=True, position=end))


def saved_document(panel) -> dict:
    panel.bound.saver.flush()
    return json.loads(panel.bound.saver.path.read_text(encoding="utf-8"))


def test_a_click_traces_the_axon_within_one_pixel(make_napari_viewer, qtbot):
    from medloop.plugins.axons.metrics import coverage

    axon = make_axon(128, "SI", np.random.default_rng(0))
    viewer = make_napari_viewer()
    panel = open_panel(viewer, qtbot, axon.image, packaged_or_fail())
    panel.window_spin.setValue(1.0)  # a synthetic image
    click(panel.bound.seeds, axon.start)
    settle(qtbot, panel)
    traces = panel.bound.traces
    assert traces.nshapes == 1 and traces.shape_type == ["path"]
    path = np.asarray(traces.data[0])
    assert not np.allclose(path, np.round(path))  # subpixel vertices
    within_1px = coverage(path, axon.centreline, radius=1.0)
    print(f"axon length covered within 1 px: {within_1px:.1f} %; {len(path) - 1} steps, {traces.features['stop_reason'][0]}")
    assert within_1px >= 80.0
    row = traces.features.iloc[0]
    assert row["seed_id"] == 0 and row["n_steps"] == len(path) - 1 and np.isfinite(row["mean_entropy"]) and not row["edited"]
    assert len(panel.bound.entropy.data) == len(path)  # one coloured point per vertex


def test_a_moved_vertex_is_autosaved_and_restored(make_napari_viewer, qtbot, scripted):
    axon = make_axon(96, "SI", np.random.default_rng(1))
    viewer = make_napari_viewer()
    panel = open_panel(viewer, qtbot, axon.image, scripted)
    click(panel.bound.seeds, (48.0, 20.0))
    settle(qtbot, panel)
    traces = panel.bound.traces
    assert traces.nshapes == 1 and len(traces.data[0]) > 30
    np.testing.assert_allclose(traces.data[0][1], [48.0, 22.0], atol=1e-4)
    moved = np.array([44.25, 22.75])
    drag_vertex(traces, 0, 1, moved)
    np.testing.assert_allclose(traces.data[0][1], moved)
    assert bool(traces.features["edited"][0])
    assert len(panel.bound.entropy.data) == len(traces.data[0]) - 1  # the moved vertex has no entropy now
    doc = saved_document(panel)
    np.testing.assert_allclose(doc["paths"][0]["vertices"][1], moved)
    assert not inside_package(panel.bound.saver.path)
    # the same image opened again (another layer, same pixels): the edit comes back
    viewer.layers.clear()
    viewer.add_image(axon.image.copy(), name="opened again")
    settle(qtbot, panel)
    restored = panel.bound.traces
    assert restored.name == "opened again traces" and restored.nshapes == 1
    np.testing.assert_allclose(restored.data[0][1], moved)
    assert "Restored 1 traces" in panel.status.text()


def test_a_3d_stack_is_refused_with_a_projection_button(make_napari_viewer, qtbot, untrained):
    stack = np.stack([make_axon(64, "SI", np.random.default_rng(i)).image for i in range(3)])
    viewer = make_napari_viewer()
    panel = open_panel(viewer, qtbot, stack, untrained, name="stack")
    text = panel.status.text()
    assert "3-D stack" in text and "maximum projection" in text and panel.bound is None
    assert panel.projection_button.isVisibleTo(panel)
    panel.projection_button.click()
    settle(qtbot, panel)
    qtbot.waitUntil(lambda: panel.bound is not None, timeout=30_000)
    layer = viewer.layers["stack max projection"]
    assert layer.ndim == 2
    np.testing.assert_array_equal(layer.data, stack.max(axis=0))
    assert panel.image_combo.currentText() == "stack max projection" and not panel.projection_button.isVisibleTo(panel)


@pytest.mark.parametrize("kind", ["rgb", "nan", "constant", "tiny"])
def test_a_bad_image_is_named_in_the_status_line(make_napari_viewer, qtbot, untrained, kind):
    good = make_axon(64, "SI", np.random.default_rng(2)).image
    bad = {
        "rgb": np.stack([good] * 3, axis=-1), "nan": np.where(good > 0.9, np.nan, good),
        "constant": np.full((64, 64), 0.5, np.float32), "tiny": good[:16, :16],
    }[kind]
    with pytest.raises(TracingInputError) as core:
        check_image(bad)
    viewer = make_napari_viewer()
    panel = open_panel(viewer, qtbot, bad, untrained, name="bad")
    assert str(core.value) in panel.status.text() and panel.bound is None
    viewer.add_image(good, name="good")  # the panel stays up and works with the next image
    panel.image_combo.setCurrentText("good")
    settle(qtbot, panel)
    assert panel.bound is not None and panel.status.text().startswith("Ready")


def _draw_part_of_the_axon(panel, axon, length_px=40.0):
    """Draw a missing path (as in napari's path tool): ``length_px`` of the true centreline."""
    from medloop.plugins.axons.geometry import resample

    part = resample(axon.centreline, 4.0)[: int(length_px / 4.0) + 1]
    panel.bound.traces.add([part], shape_type="path")
    return part


def test_fine_tune_makes_a_version_and_rollback_restores_the_previous(make_napari_viewer, qtbot, untrained, models_folder):
    axon = make_axon(64, "SI", np.random.default_rng(3))
    viewer = make_napari_viewer()
    panel = open_panel(viewer, qtbot, axon.image, untrained)
    base = {k: v.clone() for k, v in panel.actor.state_dict().items()}
    panel.fine_tune()  # nothing corrected yet: said, nothing trains
    assert "Nothing to learn from yet" in panel.status.text() and panel.job is None
    _draw_part_of_the_axon(panel, axon)
    assert list(panel.bound.traces.features["edited"]) == [True]
    panel.iterations_spin.setValue(2)
    panel.fine_tune()
    settle(qtbot, panel)
    assert panel.versions.list() == [1] and panel.versions.current == 1, panel.status.text()
    assert "Saved v1" in panel.status.text()
    assert panel.version_combo.count() == 2 and panel.version_combo.currentData() == 1
    assert len(panel.curve.points["coverage"]) == 3 and len(panel.curve.points["error"]) == 3  # before + 2 iterations
    tuned = panel.actor.state_dict()
    assert any(not torch.equal(base[k], tuned[k]) for k in base)
    assert (models_folder / "axon-trackers" / untrained.name / "v1" / "actor.pt").is_file()
    panel.version_combo.setCurrentIndex(panel.version_combo.findData(0))
    panel.rollback()
    settle(qtbot, panel)
    assert panel.versions.current == 0 and panel.actor_key == (untrained.name, 0)
    assert all(torch.equal(base[k], v) for k, v in panel.actor.state_dict().items())


def test_cancelled_fine_tune_keeps_the_tracker(make_napari_viewer, qtbot, untrained):
    axon = make_axon(64, "SI", np.random.default_rng(4))
    viewer = make_napari_viewer()
    panel = open_panel(viewer, qtbot, axon.image, untrained)
    _draw_part_of_the_axon(panel, axon)
    panel.iterations_spin.setValue(50)
    panel.fine_tune()
    qtbot.waitUntil(lambda: len(panel.curve.points["error"]) >= 2, timeout=120_000)
    panel.cancel()
    settle(qtbot, panel)
    assert panel.versions.list() == [] and panel.versions.current == 0
    assert panel.status.text() == panel.cancelled_message


def test_the_gui_never_stalls_while_tracing_and_fine_tuning(make_napari_viewer, qtbot, untrained):
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
    from bench_gui_stall import StallMeter

    axon = make_axon(128, "SI", np.random.default_rng(5))
    viewer = make_napari_viewer(show=True)
    panel = open_panel(viewer, qtbot, axon.image, untrained)
    stalls = {}
    with StallMeter() as meter:
        t0 = time.perf_counter()
        click(panel.bound.seeds, (64.0, 64.0))  # mid-image: the untrained actor runs all 200 steps
        settle(qtbot, panel)
        seconds = time.perf_counter() - t0
    stalls["trace"] = meter.worst
    assert panel.bound.traces.features["n_steps"][0] == 200
    with StallMeter() as meter:
        for k in range(3):
            click(panel.bound.seeds, (30.0 + 20 * k, 40.0))
        settle(qtbot, panel)
    stalls["3 clicks, batched"] = meter.worst
    assert panel.bound.traces.nshapes == 4
    _draw_part_of_the_axon(panel, axon)
    panel.iterations_spin.setValue(2)
    with StallMeter() as meter:
        panel.fine_tune()
        settle(qtbot, panel)
    stalls["fine-tune"] = meter.worst
    assert panel.versions.current == 1
    report = {k: f"{v * 1000:.0f} ms" for k, v in stalls.items()}
    print(f"worst GUI stalls: {report}; a 200-step trace, click to path shown: {seconds:.2f} s")
    assert max(stalls.values()) < STALL_BOUND_S, report
    # The goal is < 1 s on an idle core (0.42-0.62 s measured); a generous bound here, because
    # the shared CI box runs other work beside this test (1.01 s seen under a load of 3).
    assert seconds < 3.0


def test_swc_buttons_call_the_swc_module(make_napari_viewer, qtbot, scripted, monkeypatch, tmp_path):
    """Until medloop.plugins.axons.swc lands, a stand-in checks the calls the panel makes:
    ``write_swc(path, [(N, 2) row/col arrays], spacing=None)`` and ``read_swc(path) -> arrays``."""
    from types import SimpleNamespace

    from medloop.plugins.axons import widget

    written = {}
    fake = SimpleNamespace(
        write_swc=lambda path, paths, spacing=None: written.update(path=path, paths=paths, spacing=spacing),
        read_swc=lambda path: [np.array([[10.0, 10.0], [12.5, 20.25]])],
    )
    monkeypatch.setattr(widget, "_swc", lambda: fake)
    panel = open_panel(make_napari_viewer(), qtbot, make_axon(64, "SI", np.random.default_rng(6)).image, scripted)
    click(panel.bound.seeds, (30.0, 10.0))
    settle(qtbot, panel)
    panel.save_swc_to(str(tmp_path / "t.swc"))
    settle(qtbot, panel)
    assert written["spacing"] is None and len(written["paths"]) == 1
    np.testing.assert_allclose(written["paths"][0], panel.bound.traces.data[0])
    panel.load_swc_from(str(tmp_path / "t.swc"))
    settle(qtbot, panel)
    assert panel.bound.traces.nshapes == 2 and list(panel.bound.traces.features["edited"]) == [False, True]
    np.testing.assert_allclose(panel.bound.traces.data[1], [[10.0, 10.0], [12.5, 20.25]])
