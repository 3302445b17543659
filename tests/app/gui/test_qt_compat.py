"""The Qt-binding work-around (widget tier): after it, QApplication's getters that return None no
longer take references from None (PySide6 6.12 aborts Python 3.11 after a few thousand)."""

from __future__ import annotations

import sys

from qtpy.QtWidgets import QApplication

from medloop.app.gui.qt_compat import fix_none_refcount


def test_none_getters_keep_the_refcount_of_none(qapp):
    fix_none_refcount()
    before = sys.getrefcount(None)
    for _ in range(2000):
        QApplication.activePopupWidget()
        QApplication.focusWidget()
    assert abs(before - sys.getrefcount(None)) < 50
