"""Stroke -> live prediction latency in the Correction panel (issue #20 §5): the first stroke
after opening the panel on an image, and later strokes, on the packaged brain sample in a real
viewer (live mode, brain-tissue-t1, the slice on screen).

Latency = from the live update's start (the debounce timer firing) to its prediction being shown
(the panel's status line reporting the update; the *Where to paint next* pass, when on, follows).
``warm``: the user paints once the panel's background warm-up has finished (what opening the
panel and looking at the image gives in practice); ``cold``: the first stroke lands at once, before
the warm-up (what every first stroke paid before the warm start); the last row turns the "Where
to paint next" guidance off (its slice pass runs in every live update). Goals: first stroke <= 0.5 s,
later strokes <= 100 ms. Run under a display: ``xvfb-run -a python benchmarks/bench_live_latency.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def until(predicate, timeout: float = 300.0) -> float:
    """Run the event loop until ``predicate()`` holds; the moment it first did (perf_counter)."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + timeout
    while not predicate():
        QApplication.processEvents()
        time.sleep(0.001)
        if time.perf_counter() > end:
            raise TimeoutError("the live update did not finish")
    return time.perf_counter()


def strokes(viewer, panel, warm: bool, count: int = 4) -> list[float]:
    """Latencies (s) of ``count`` successive strokes on a fresh annotation layer."""
    from bench_gui_stall import wait

    name = "MNI152 T1 (2 mm)"
    for layer_name in [f"{name} annotations", f"{name} prediction"]:
        if layer_name in viewer.layers:
            viewer.layers.remove(layer_name)
    panel.session, panel.session_key = None, None
    fired: list[float] = []
    panel.live_timer.timeout.connect(lambda: fired.append(time.perf_counter()))
    layer = panel.annotation_layer()
    if warm:
        wait(lambda: panel.warm_job is None)
    z = int(layer.data.shape[0] // 2)
    out = []
    for k in range(count):
        data = np.asarray(layer.data).copy()
        data[z, 40 + 3 * k : 42 + 3 * k, 30:70] = 2  # grey matter
        data[z, 60 + 2 * k : 61 + 2 * k, 30:70] = 3  # white matter
        data[z, 5 + k : 6 + k, 5:40] = 1  # background
        before = panel.status.text()
        layer.data = data
        shown = until(lambda: bool(fired) and panel.status.text() != before and panel.status.text().startswith("Live update"))
        until(lambda: panel.job is None and not panel.live_timer.isActive())  # the guidance, when on, follows
        out.append(shown - fired[-1])
        wait(lambda: True)  # let the queued layer updates run before the next stroke
    wait(lambda: panel.warm_job is None)
    return out


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    from medloop.app.gui.launcher import make_viewer
    from medloop.app.gui.layers import add_layer_data
    from medloop.app.gui.panels import open_panel
    from medloop.app.manifest import method_panels
    from medloop.app.samples import brain_sample_layers

    viewer = make_viewer(show=True)
    add_layer_data(viewer, brain_sample_layers())
    method = next(m for m in method_panels() if m.display_name == "Correction")
    panel = open_panel(viewer, method)
    panel.image_combo.setCurrentText("MNI152 T1 (2 mm)")
    panel.model_combo.setCurrentText("brain-tissue-t1")
    panel.live_check.setChecked(True)
    rows = {"cold (stroke before the warm-up)": strokes(viewer, panel, warm=False),
            "warm (stroke after the warm-up)": strokes(viewer, panel, warm=True)}
    panel.guidance.show_check.setChecked(False)  # the head fit and the prediction alone
    rows["warm, without 'where to paint next'"] = strokes(viewer, panel, warm=True)
    viewer.close()
    print("stroke -> live prediction latency, ms (first, then later strokes); goals: first <= 500, later <= 100")
    for name, values in rows.items():
        later = values[1:]
        print(f"  {name:34s} first {1000 * values[0]:6.0f}   later {', '.join(f'{1000 * v:.0f}' for v in later)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
