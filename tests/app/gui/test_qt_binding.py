"""The Qt binding keeps Python's reference to None: PySide6 6.12.0 dropped one per void Qt call,
and on Python 3.11 a review session or a test run then aborted ("none_dealloc: deallocating
None"). The set-up pins a binding without the leak; this measures it."""

from __future__ import annotations

import sys


def test_void_qt_calls_keep_the_reference_to_none(qtbot):
    from qtpy.QtWidgets import QLineEdit

    edit = QLineEdit()
    qtbot.addWidget(edit)
    before = sys.getrefcount(None)
    for i in range(10_000):
        edit.setText(str(i))
    assert edit.text() == "9999"
    assert abs(sys.getrefcount(None) - before) < 100  # 6.12.0: 10,000 fewer


def test_application_getters_keep_the_reference_to_none(qtbot):
    """napari's event filter calls ``activePopupWidget()`` on every event; with 6.12.0 each call
    that returned None took a reference from None."""
    from qtpy.QtWidgets import QApplication

    assert QApplication.activePopupWidget() is None
    before = sys.getrefcount(None)
    for _ in range(10_000):
        QApplication.activePopupWidget()
        QApplication.activeModalWidget()
    assert abs(sys.getrefcount(None) - before) < 100
