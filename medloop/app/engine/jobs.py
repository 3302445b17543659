"""Cancellation and progress conventions shared by long-running engine work.

Engine functions take ``progress(done, total)`` and ``should_stop()`` callables instead of Qt
signals, so they run unchanged from the CLI, a test or a GUI worker thread (the GUI marshals the
calls to its own thread).
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each unit of work (units are the caller's)."""

ShouldStop = Callable[[], bool]
"""Polled between units of work; returning True asks the work to stop as soon as it can."""


class JobCancelled(Exception):
    """The work stopped because ``should_stop()`` returned True.

    Deliberately not a :class:`~medloop.app.errors.MedloopError`: a cancellation is what the user
    asked for, not an error to report.
    """


def check_stop(should_stop: ShouldStop | None) -> None:
    """Raise :class:`JobCancelled` if ``should_stop`` is given and returns True."""
    if should_stop is not None and should_stop():
        raise JobCancelled("cancelled")
