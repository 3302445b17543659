"""A panel closed with its dock's close button (napari's ``remove_dock_widget``, which only
unparents it) writes its pending edits, stops its autosave thread and is deleted on the GUI
thread, also while a job runs; it is not left for Python's cyclic collector, which may run on
any thread (a Qt widget freed on a worker thread crashes the process)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medloop.app.io.image import MedImage
from medloop.models import registry
from medloop.plugins.correction.synth import nuclei
from medloop.plugins.correction.weaklabels import strokes
from tests.models.tiny import make_tiny_model

pytestmark = pytest.mark.viewer


def _docked_correction(make_napari_viewer, tmp_path, monkeypatch):
    from medloop.plugins.correction.widget import CorrectionPanel

    torch.set_num_threads(1)
    weights, card = make_tiny_model(tmp_path / "src", spatial_dims=2, in_channels=1)
    registry.register_model(weights, card, tmp_path / "zoo")
    monkeypatch.setattr(registry, "user_models_dir", lambda: tmp_path / "zoo")
    sample = nuclei(np.random.default_rng(3), channels=1)
    image = MedImage.from_array(sample.image[0], spacing=(0.5, 0.5), path=str(tmp_path / "cells.tif"))
    viewer = make_napari_viewer()
    viewer.add_image(image.array, name="cells", metadata={"medloop_image": image}, **image.layer_kwargs())
    panel = CorrectionPanel(viewer, live_delay_ms=10)
    dock = viewer.window.add_dock_widget(panel, name="Correction", area="right")
    panel.model_combo.setCurrentText("tiny-threshold")
    painted, _ = strokes((sample.semantic > 0).astype(np.int64), coverage=0.08, margin=1, rng=np.random.default_rng(0))
    return viewer, dock, panel, painted.astype(np.uint8)


@pytest.mark.parametrize("job_running", [False, True])
def test_closing_the_dock_saves_stops_the_autosave_and_deletes_the_panel(make_napari_viewer, qtbot, tmp_path, monkeypatch, job_running):
    try:
        from shiboken6 import isValid
    except ImportError:  # PyQt
        from sip import isdeleted

        def isValid(obj):  # noqa: N802 - shiboken's name
            return not isdeleted(obj)

    viewer, dock, panel, painted = _docked_correction(make_napari_viewer, tmp_path, monkeypatch)
    qtbot.waitUntil(lambda: panel.warm_job is None, timeout=60_000)
    ann = panel.annotation_layer()
    saver = panel.saver
    ann.data = painted  # strokes: a live update starts (a job) and a save is pending
    if job_running:
        qtbot.waitUntil(lambda: panel.job is not None, timeout=10_000)
    else:
        qtbot.waitUntil(lambda: panel.job is None and not panel.live_timer.isActive(), timeout=60_000)
    assert saver.dirty or job_running
    viewer.window.remove_dock_widget(dock)  # what the dock's close button does
    assert panel.saver is None and not saver._thread.is_alive()  # pending edits written, thread stopped
    np.testing.assert_array_equal(saver.store.load(saver.image, "cells annotations"), painted)
    qtbot.waitUntil(lambda: not isValid(panel), timeout=60_000)  # deleted by Qt, on this thread
    viewer.add_image(np.zeros((8, 8)), name="later")  # the viewer's events no longer reach it
