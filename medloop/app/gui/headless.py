"""A virtual X display for screenshots on machines without a screen."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from typing import Iterator

from medloop.app.errors import MedloopError


class DisplayError(MedloopError):
    """No display is available and none can be started."""


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def require_display() -> None:
    """Fail with a clear message, instead of Qt aborting the process, when there is no screen."""
    if not has_display():
        raise DisplayError(
            "no display to open a window on; run from a desktop session, or render headless "
            "with 'medloop demo --screenshot PNG'"
        )


@contextmanager
def display_for_screenshot(size: tuple[int, int] = (1400, 900)) -> Iterator[None]:
    """Use the current display if there is one, else run a private Xvfb for the duration."""
    if has_display():
        yield
        return
    if shutil.which("Xvfb") is None:
        raise DisplayError(
            "no display to render on and Xvfb is not installed; run under a desktop session "
            "or install Xvfb and Mesa (scripts/ensure-display-deps.sh)"
        )
    from pyvirtualdisplay import Display

    with Display(visible=False, size=size, color_depth=24):
        yield
