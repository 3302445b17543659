"""The GUI never freezes (issue 14 §3): a 10 ms QTimer on the GUI thread measures the worst
event-loop gap while the most common actions run in a real viewer on the packaged brain sample.
The DESIGN goal is 100 ms (``benchmarks/bench_gui_stall.py`` reports the real figures); the test
bound is generous because on a machine without a GPU (Xvfb + Mesa's software OpenGL, as in CI)
one repaint of a window holding the GL canvas costs 30-250 ms by itself, and adding a layer
costs napari 130-200 ms; work done on the GUI thread (building a network, normalising a volume,
reading a case and re-creating its layers) costs seconds and fails it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from bench_gui_stall import live_strokes, review_open_and_next, segmentation_first_result  # noqa: E402

pytestmark = pytest.mark.viewer
BOUND_S = 1.0
#: The heavy steps that must never run on the GUI thread, as ``module:function``.
HEAVY = (
    "medloop.models.inputs:network_input",
    "medloop.models.registry:build_model",
    "medloop.app.io.read:read_image",
    "medloop.plugins.segmentation.method:segment",
)


@pytest.fixture
def gui_thread_calls(monkeypatch):
    """The HEAVY functions called on the GUI thread while the test runs (name -> count)."""
    import importlib
    import threading

    calls: dict[str, int] = {}
    for ref in HEAVY:
        module_name, name = ref.split(":")
        module = importlib.import_module(module_name)
        real = getattr(module, name)

        def watched(*args, __real=real, __ref=ref, **kwargs):
            if threading.current_thread() is threading.main_thread():
                calls[__ref] = calls.get(__ref, 0) + 1
            return __real(*args, **kwargs)

        monkeypatch.setattr(module, name, watched)
    return calls


@pytest.fixture
def viewer_with_panels(make_napari_viewer):
    import torch

    from medloop.app.gui.layers import add_layer_data
    from medloop.app.gui.panels import open_panel
    from medloop.app.manifest import method_panels
    from medloop.app.samples import brain_sample_layers

    torch.set_num_threads(1)
    viewer = make_napari_viewer(show=True)
    add_layer_data(viewer, brain_sample_layers())
    return viewer, {m.display_name: open_panel(viewer, m) for m in method_panels()}


def test_segmentation_result_and_live_strokes_do_not_stall(viewer_with_panels, gui_thread_calls, monkeypatch, tmp_path):
    from medloop.app.io import autosave

    monkeypatch.setattr(autosave, "_user_annotation_folder", lambda: tmp_path / "annotations")
    viewer, panels = viewer_with_panels
    panels["Correction"].live_check.setChecked(True)
    panels["Correction"].image_combo.setCurrentText("MNI152 T1 (2 mm)")
    panels["Correction"].annotation_layer()  # made by the user before painting (not measured)
    gui_thread_calls.clear()
    first_result = segmentation_first_result(viewer, panels)
    first_stroke, later_stroke = live_strokes(viewer, panels)
    stalls = {"first result": first_result, "first stroke": first_stroke, "later stroke": later_stroke}
    assert gui_thread_calls == {}  # networks, inputs and segmentation all ran in workers
    assert max(stalls.values()) < BOUND_S, {k: f"{v * 1000:.0f} ms" for k, v in stalls.items()}
    prediction = viewer.layers["MNI152 T1 (2 mm) prediction"].data
    assert (prediction[prediction.shape[0] // 2] > 0).sum() > 1000  # the live prediction is shown
def test_review_open_and_next_do_not_stall(viewer_with_panels, gui_thread_calls, tmp_path):
    viewer, panels = viewer_with_panels
    opened, following = review_open_and_next(viewer, panels, tmp_path, gui_thread_calls.clear)
    assert gui_thread_calls == {}  # cases are read in a worker
    assert max(opened, following) < BOUND_S, (f"open {opened * 1000:.0f} ms", f"next {following * 1000:.0f} ms")
    assert panels["Review"].case_id is not None
