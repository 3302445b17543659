"""Work-arounds for bugs in the Qt bindings, applied once when medloop's GUI starts.

PySide6 6.12.0: ``QApplication``'s static widget getters (``activePopupWidget``, ``focusWidget``,
...) return ``None`` without a new reference, so every call that returns ``None`` takes one
reference from ``None``. napari's main window calls ``activePopupWidget()`` for every event it
filters, and Python 3.11 aborts (``Fatal Python error: none_dealloc``) after a few thousand
events. The fix is detected, not assumed: the getters are wrapped only when a probe shows the
leak, and the wrapper gives back the reference the binding took.
"""

from __future__ import annotations

import sys

_GETTERS = ("activePopupWidget", "activeModalWidget", "focusWidget", "activeWindow")
_PROBES = 64


def fix_none_refcount() -> bool:
    """Wrap the leaking ``QApplication`` getters; returns True when they leak (and are fixed now)."""
    import ctypes

    from qtpy.QtWidgets import QApplication

    if getattr(QApplication, "_medloop_none_fixed", None) is not None:
        return QApplication._medloop_none_fixed
    incref = ctypes.pythonapi.Py_IncRef
    incref.argtypes = [ctypes.py_object]
    probe = QApplication.activePopupWidget
    if QApplication.instance() is None or probe() is not None:  # nothing to measure with
        incref(None)  # the probe may have taken one reference
        return False
    incref(None)
    before = sys.getrefcount(None)
    for _ in range(_PROBES):
        probe()
    leaked = before - sys.getrefcount(None)
    leaks = leaked >= _PROBES - 4  # other threads may add or drop a few references meanwhile
    if leaks:
        for _ in range(_PROBES):
            incref(None)
        for name in _GETTERS:
            original = getattr(QApplication, name)

            def fixed(*args, _original=original, **kwargs):
                result = _original(*args, **kwargs)
                if result is None:
                    incref(None)
                return result

            setattr(QApplication, name, staticmethod(fixed))
    QApplication._medloop_none_fixed = leaks
    return leaks
