"""A guard against a Qt binding that drops a reference to ``None`` on every call.

PySide6 6.12.0 (the build this project is tested with) decrements ``None``'s reference count
once for every call of a Qt method that returns nothing (``setText``, ``addItem``, ...). On
Python < 3.12 ``None`` is not immortal, so after some ten thousand calls the interpreter aborts
with "none_dealloc: deallocating None" — in a long review session or a test run. Until the
binding is fixed we measure the leak once and, where it exists, keep a few million extra
references to ``None`` (32 MB), enough for millions of calls.
"""

from __future__ import annotations

import sys

_BALLAST: list[None] = []
BALLAST_SIZE = 4_000_000


def leaks_none() -> bool:
    """Whether a void Qt call drops a reference to None (needs a QApplication-free QObject)."""
    from qtpy.QtCore import QObject

    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(100):
        probe.setObjectName("probe")
    return sys.getrefcount(None) < before - 50


def guard_none() -> bool:
    """Pin extra references to None when the Qt binding leaks them (once); True when pinned."""
    if _BALLAST or sys.version_info >= (3, 12):
        return bool(_BALLAST)
    if leaks_none():
        _BALLAST.extend([None] * BALLAST_SIZE)
    return bool(_BALLAST)
