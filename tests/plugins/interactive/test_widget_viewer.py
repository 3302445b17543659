"""Click -> object panel, viewer tier (a real napari window under Xvfb): on the packaged MNI152
brain, a click in each lateral ventricle gives the ventricles (Dice vs the reference), Ctrl+Z
reverts exactly (and napari's own history agrees), labels and the prompt log are autosaved, and
ten rapid clicks never stall the event loop (measured with a 10 ms timer) while the later
clicks are coalesced.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.plugins.interactive.test_widget import click, press

pytestmark = pytest.mark.viewer
STALL_BOUND_S = 0.2
CLICK_BUDGET_S = 2.0  # click -> object shown; ~0.1-0.3 s measured on an idle core, generous for the shared box


def test_clicks_on_the_brain_sample_segment_the_ventricles_undo_autosave_and_never_stall(make_napari_viewer, qtbot, brain_sample):
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
    from bench_gui_stall import StallMeter, wait

    from medloop.app.gui.layers import add_layer_data
    from medloop.app.samples import brain_sample_layers
    from medloop.plugins.interactive import evaluation as ev
    from medloop.plugins.interactive.widget import InteractivePanel

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    add_layer_data(viewer, brain_sample_layers())
    panel = InteractivePanel(viewer)
    viewer.window.add_dock_widget(panel, name="Click to segment", area="right")
    panel.image_combo.setCurrentText("MNI152 T1 (2 mm)")
    assert panel.target_combo.currentText() == "(new) MNI152 T1 (2 mm) objects"
    panel.start_session()
    wait(lambda: panel.bound is not None and not panel.busy(), timeout=120)
    b = panel.bound
    t1, tissue = brain_sample
    reference = ev.ventricles(np.asarray(tissue.array))
    spacing = tuple(t1.spacing[::-1])
    first = ev.first_click(reference, spacing)  # the deepest ventricle voxel (left or right)
    viewer.dims.set_point(0, b.image_layer.data_to_world(np.asarray(first, float))[0])
    qtbot.wait(300)  # the slice change repaints first: the meter below measures the click alone
    empty = np.array(b.target.data, copy=True)
    with StallMeter() as meter:
        t0 = time.perf_counter()
        click(b.prompts, first)
        wait(lambda: not panel.busy() and (np.asarray(b.target.data) > 0).any(), timeout=30)
        first_seconds = time.perf_counter() - t0
    stalls = {"first click": meter.worst}
    assert first_seconds < CLICK_BUDGET_S, first_seconds
    one = np.array(b.target.data, copy=True)
    # the other lateral ventricle: the simulator's next click (the centre of the larger miss)
    second, positive = ev.next_click(reference, one > 0, spacing, ev.Clicker(), np.random.default_rng(0))
    assert positive and second[0] == first[0]  # on the displayed axial slice
    click(b.prompts, second)
    wait(lambda: not panel.busy(), timeout=30)
    two = np.array(b.target.data, copy=True)
    dice = ev.dice(two > 0, reference)
    assert dice >= 0.8, dice
    viewer.window._qt_window.grab().save("/tmp/interactive_panel.png")
    # Ctrl+Z reverts the second click bit for bit; napari's own history agrees (its undo
    # reverts the session's undo, its redo re-applies it)
    press(b.prompts, "Control-Z")
    wait(lambda: not panel.busy(), timeout=30)
    assert np.array_equal(b.target.data, one)
    b.target.undo()
    assert np.array_equal(b.target.data, two)
    b.target.redo()
    assert np.array_equal(b.target.data, one)
    press(b.prompts, "Control-Shift-Z")
    wait(lambda: not panel.busy(), timeout=30)
    assert np.array_equal(b.target.data, two)
    # autosave: the labels file and the prompt log exist after the interaction
    wait(lambda: b.saver.path.is_file() and not b.saver.dirty, timeout=10)
    assert b.setup.log_path.is_file() and b.setup.log_path.name.endswith(".prompts.csv")
    assert "Last prompt:" in panel.info_label.text() and "voxels" in panel.info_label.text()
    # ten rapid clicks (one every 20 ms) on other brain voxels: the worker coalesces them
    press(b.prompts, "Escape")
    wait(lambda: not panel.busy(), timeout=30)
    assert np.array_equal(b.target.data, empty)
    rng = np.random.default_rng(1)
    brain = np.argwhere(np.asarray(tissue.array)[first[0]] == 2)
    runs_before = b.runner.runs
    with StallMeter() as meter:
        for k in range(10):
            y, x = brain[rng.integers(len(brain))]
            click(b.prompts, (first[0], int(y), int(x)))
            end = time.perf_counter() + 0.02
            while time.perf_counter() < end:
                qtbot.wait(2)
        wait(lambda: not panel.busy(), timeout=60)
    stalls["10 rapid clicks"] = meter.worst
    runs = b.runner.runs - runs_before
    skipped = sum(1 for r in b.runner.session.log if r.event == "skip")
    report = {k: f"{v * 1000:.0f} ms" for k, v in stalls.items()}
    print(f"worst GUI stalls: {report}; first click -> object shown {first_seconds:.2f} s; Dice after 2 clicks {dice:.3f}; "
          f"10 rapid clicks -> {runs} engine runs, {skipped} skipped (logged)")
    print("gaps over 100 ms (s after start, s):", meter.gaps)
    assert runs < 10 and skipped == 10 - runs
    assert max(stalls.values()) < STALL_BOUND_S, report
    panel.stop_session()
