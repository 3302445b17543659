"""How long the GUI thread stalls during the actions users do most (issue 14 §3; goal: no
event-loop gap over 100 ms).

A 10 ms QTimer ticks on the GUI thread while each action runs in a real napari viewer on the
packaged brain sample; the worst gap between ticks is the stall. Actions: the first segmentation
result (Segmentation panel, Run), the first live stroke on a slice (Correction panel, live mode,
a fresh session: network and inputs are prepared), a later live stroke, opening a review case,
and Next. Run under a display (``xvfb-run -a python benchmarks/bench_gui_stall.py``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

GOAL_MS = 100.0


class StallMeter:
    """Largest gap between 10 ms timer ticks while active: how long the event loop was blocked."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.last = time.perf_counter()
        self.worst = 0.0
        self.timer = QTimer()
        self.timer.timeout.connect(self._tick)

    def __enter__(self) -> "StallMeter":
        self.last, self.worst = time.perf_counter(), 0.0
        self.started, self.gaps = self.last, []  # gaps over 100 ms: (seconds after start, gap)
        self.timer.start(10)
        return self

    def __exit__(self, *exc) -> None:
        self._tick()
        self.timer.stop()

    def _tick(self) -> None:
        now = time.perf_counter()
        if now - self.last > 0.1 and hasattr(self, "gaps"):
            self.gaps.append((round(self.last - self.started, 3), round(now - self.last, 3)))
        self.worst = max(self.worst, now - self.last)
        self.last = now


def wait(predicate, timeout: float = 300.0) -> None:
    """Run the event loop until ``predicate()`` holds."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + timeout
    while not predicate():
        QApplication.processEvents()
        time.sleep(0.002)
        if time.perf_counter() > end:
            raise TimeoutError("the action did not finish")
    for _ in range(20):  # let the layer updates the job's end queued run under the meter too
        QApplication.processEvents()
        time.sleep(0.005)


def segmentation_first_result(viewer, panels) -> float:
    panel = panels["Segmentation"]
    panel.image_combo.setCurrentText("MNI152 T1 (2 mm)")
    with StallMeter() as meter:
        panel.run()
        wait(lambda: panel.job is None)
    return meter.worst


def live_strokes(viewer, panels) -> tuple[float, float]:
    panel = panels["Correction"]
    panel.image_combo.setCurrentText("MNI152 T1 (2 mm)")
    panel.live_check.setChecked(True)
    layer = panel.annotation_layer()
    z = int(layer.data.shape[0] // 2)
    viewer.dims.set_point(0, float(viewer.layers["MNI152 T1 (2 mm)"].data_to_world([z, 0, 0])[0]))
    stalls = []
    for offset in (0, 6):
        data = np.asarray(layer.data).copy()
        data[z, 40 + offset : 44 + offset, 30:70] = 2  # grey matter stroke
        data[z, 60 + offset : 62 + offset, 30:70] = 3  # white matter stroke
        data[z, 5:7, 5:40] = 1  # background stroke
        with StallMeter() as meter:
            layer.data = data
            wait(lambda: panel.job is None and not panel.live_timer.isActive())
        stalls.append(meter.worst)
    return stalls[0], stalls[1]


def review_open_and_next(viewer, panels, folder: Path, before=lambda: None) -> tuple[float, float]:
    """Stalls of opening the first case and of Next; ``before()`` runs once the project exists."""
    from medloop.app.io.write import write_image
    from medloop.app.samples import load_brain_sample
    from medloop.plugins.review.project import ReviewProject

    t1, _ = load_brain_sample()
    paths = [write_image(replace(t1, path=None), folder / f"brain{k}.nii.gz") for k in range(2)]
    project = ReviewProject.create_with_model(folder / "proj", paths, "brain-tissue-t1", device="cpu")
    panel = panels["Review"]
    panel.reviewer_edit.setText("bench")
    panel.open_project(project.folder)
    before()
    stalls = []
    for action in (lambda: panel.step(+1), lambda: panel.step(+1)):
        with StallMeter() as meter:
            action()
            wait(lambda: getattr(panel, "job", None) is None)
        stalls.append(meter.worst)
    return stalls[0], stalls[1]


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    import torch

    from medloop.app.gui.launcher import make_viewer
    from medloop.app.gui.layers import add_layer_data
    from medloop.app.gui.panels import open_panel
    from medloop.app.manifest import method_panels
    from medloop.app.samples import brain_sample_layers

    torch.set_num_threads(1)
    viewer = make_viewer(show=True)
    add_layer_data(viewer, brain_sample_layers())
    panels = {m.display_name: open_panel(viewer, m) for m in method_panels()}
    rows = [("first segmentation result (Run)", segmentation_first_result(viewer, panels))]
    first, later = live_strokes(viewer, panels)
    rows += [("live mode: first stroke (fresh session)", first), ("live mode: a later stroke", later)]
    with tempfile.TemporaryDirectory() as tmp:
        opened, following = review_open_and_next(viewer, panels, Path(tmp))
    rows += [("review: open a case", opened), ("review: Next", following)]
    viewer.close()
    print(f"{'action':44s} {'worst stall':>12s}  goal {GOAL_MS:.0f} ms")
    for name, seconds in rows:
        flag = "ok" if seconds * 1000 <= GOAL_MS else "OVER"
        print(f"{name:44s} {seconds * 1000:9.0f} ms  {flag}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
