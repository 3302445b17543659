"""A guard against a Qt binding that drops a reference to ``None`` on every call.

PySide6 6.12.0 (the build this project is tested with) decrements ``None``'s reference count
once for every call of a Qt method that returns nothing (``setText``, ``addItem``, ...). On
Python < 3.12 ``None`` is not immortal, so after some ten thousand calls the interpreter aborts
with "none_dealloc: deallocating None" — in a long review session, a test run, or at exit. Until
the binding is fixed we measure the leak once and, where it exists, add references to ``None``
that are never given back (CPython's reference count field, raised once; no memory is used), as
Python 3.12 does for every immortal object. Nothing is done where there is no leak.
"""

from __future__ import annotations

import sys

BALLAST_SIZE = 1 << 40  # about 10^12 calls
_pinned = False


def leaks_none() -> bool:
    """Whether a void Qt call drops a reference to None."""
    from qtpy.QtCore import QObject

    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(100):
        probe.setObjectName("probe")
    return sys.getrefcount(None) < before - 50


def guard_none() -> bool:
    """Raise None's reference count once when the Qt binding leaks it; True when raised."""
    global _pinned
    if _pinned or sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return _pinned
    if leaks_none():
        import ctypes

        ctypes.c_ssize_t.from_address(id(None)).value += BALLAST_SIZE  # ob_refcnt is the first field
        _pinned = True
    return _pinned
