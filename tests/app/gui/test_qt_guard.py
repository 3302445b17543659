"""The None-reference guard: after it, thousands of void Qt calls cannot bring None's reference
count near zero (PySide6 6.12 drops one per call; the interpreter aborted mid test run)."""

from __future__ import annotations

import sys

from medloop.app.gui.qt_guard import BALLAST_SIZE, guard_none, leaks_none


def test_guard_keeps_none_alive_under_void_qt_calls(qtbot):
    from qtpy.QtWidgets import QLineEdit

    pinned = guard_none()
    assert pinned == (leaks_none() and sys.version_info < (3, 12))
    edit = QLineEdit()
    before = sys.getrefcount(None)
    for i in range(20_000):
        edit.setText(str(i))
    after = sys.getrefcount(None)
    assert before - after in ((range(19_990, 20_010)) if leaks_none() else range(-10, 10))  # the leak, measured
    if pinned:
        assert after > BALLAST_SIZE - 10_000_000  # far from zero
    assert edit.text() == "19999"
