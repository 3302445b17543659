"""Spec §4 (crash safety) with a real ``kill -9``: a child process drives the click -> object
panel (offscreen Qt) and toggles undo/redo of an open object without pause, writing the labels
and the prompt log on every interaction; it is killed at a random moment. Whatever the moment,
the files read back, and Start in a new panel gives back one of the two states the child showed,
committed objects exact (nothing flushed at exit: SIGKILL runs no handler)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.plugins.interactive.test_widget import open_panel, start

CHILD = r"""
import sys
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QApplication

from medloop.app.io import autosave

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
autosave._user_annotation_folder = lambda: folder  # the test's folder, not the user's
app = QApplication([])


class Bot:  # what the test helpers need of pytest-qt's qtbot
    def addWidget(self, widget):
        self.widget = widget

    def waitUntil(self, condition, timeout=60_000):
        import time
        end = time.monotonic() + timeout / 1000
        while not condition():
            if time.monotonic() > end:
                raise TimeoutError("the panel did not settle")
            app.processEvents()
            time.sleep(0.002)

    def wait(self, ms):
        self.waitUntil(lambda: True)


from tests.plugins.interactive.test_widget import CENTRE, click, open_panel, press, settle, start

bot = Bot()
viewer, panel = open_panel(bot)
b = start(bot, panel)
click(b.prompts, CENTRE)
settle(bot, panel)
press(b.prompts, "N")  # object 1 committed
settle(bot, panel)
panel.class_spin.setValue(2)
click(b.prompts, (3, 3, 3))  # the open object, class 2
settle(bot, panel)
np.save(out / "shown_with.npy", np.asarray(b.target.data))
press(b.prompts, "Control-Z")
settle(bot, panel)
np.save(out / "shown_without.npy", np.asarray(b.target.data))
print("LOOP", flush=True)
step = 0
while True:  # redo, undo, ... each one writes the log; the labels follow within the autosave delay
    press(b.prompts, "Control-Shift-Z" if step % 2 == 0 else "Control-Z")
    settle(bot, panel)
    step += 1
    print(step, flush=True)
"""


@pytest.mark.parametrize("delay_s", [0.4, 1.3])
def test_kill_9_at_any_moment_restores_a_state_the_user_saw(qtbot, tmp_path, _user_annotation_folder, delay_s):
    from medloop.plugins.interactive.promptlog import read_log

    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(Path(__file__).resolve().parents[3]))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(_user_annotation_folder), str(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = child.stdout.readline()
        assert line.strip() == "LOOP", child.stderr.read()
        time.sleep(delay_s)
        child.send_signal(signal.SIGKILL)
        steps = [ln for ln in child.stdout.read().split() if ln.isdigit()]
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL and len(steps) >= 2  # it was killed mid-loop
    shown_with, shown_without = np.load(tmp_path / "shown_with.npy"), np.load(tmp_path / "shown_without.npy")
    assert (shown_with == 2).sum() > 100 and not (shown_without == 2).any() and (shown_without == 1).sum() > 100

    logs = [p for p in _user_annotation_folder.rglob("*.csv") if not p.name.startswith(".")]
    leftovers = {p for p in _user_annotation_folder.rglob(".*") if p.is_file()}
    from medloop.app.io.autosave import AnnotationStore

    # a write killed midway leaves its temporary file; the store knows it as one (deleted once stale)
    assert len(logs) == 1 and leftovers <= set(AnnotationStore(_user_annotation_folder).temp_files())
    rows = read_log(logs[0])  # never a torn file: every write replaced it whole
    assert [r.event for r in rows[:3]] == ["prompt", "commit", "prompt"] and len(rows) >= 4 + len(steps) - 1
    viewer, panel = open_panel(qtbot)
    b = start(qtbot, panel)
    restored = np.asarray(b.target.data)
    assert np.array_equal(restored, shown_with) or np.array_equal(restored, shown_without)
    assert np.array_equal(restored == 1, shown_without == 1)  # the committed object, exactly
    # the open object's state is the log's: an odd number of undo/redo rows after the first undo = redone
    toggles = sum(r.event in ("undo", "redo") for r in rows)
    assert np.array_equal(restored, shown_with if toggles % 2 == 0 else shown_without)
    panel.stop_session()
