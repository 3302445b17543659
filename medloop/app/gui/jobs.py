"""Run Qt-free compute off the GUI thread with progress, cancel and error notifications.

Every medloop panel starts its work through :func:`start_job`; the compute function receives
``progress(done, total)`` and ``should_stop()`` callbacks, exactly as the CLI calls it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from qtpy.QtCore import QObject, Signal
from superqt.utils import create_worker

from medloop.app.engine.jobs import JobCancelled


class _Bridge(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    progressed = Signal(int, int)
    reported = Signal(object)  # the info dict of a progress call, e.g. an epoch's losses


@dataclass
class Job:
    """A running job: ``cancel()`` asks the compute to stop at its next check."""

    worker: Any
    stop: threading.Event = field(default_factory=threading.Event)
    bridge: _Bridge = field(default_factory=_Bridge)

    def cancel(self) -> None:
        self.stop.set()

    @property
    def running(self) -> bool:
        return bool(self.worker.is_running)


def start_job(
    compute: Callable[[Callable[[int, int], None], Callable[[], bool]], Any],
    on_done: Callable[[Any], None],
    on_progress: Callable[[int, int], None] | None = None,
    on_error: Callable[[Exception], None] | None = None,
    on_cancelled: Callable[[], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    on_info: Callable[[dict[str, Any]], None] | None = None,
) -> Job:
    """Start ``compute(progress, should_stop)`` in a worker thread; callbacks run on the GUI thread.

    A ``JobCancelled`` from the compute calls ``on_cancelled``; a ``MedloopError`` (or any other
    exception) calls ``on_error`` (default: a napari error notification). ``on_finished`` runs last
    in every case. ``on_info(info)`` receives the optional third argument of
    ``progress(done, total, info)`` (training reports each epoch's losses this way).
    """
    stop = threading.Event()
    bridge = _Bridge()
    if on_progress is not None:
        bridge.progressed.connect(on_progress)
    if on_info is not None:
        bridge.reported.connect(on_info)

    def progress(done: int, total: int, info: dict[str, Any] | None = None) -> None:
        bridge.progressed.emit(int(done), int(total))
        if info:
            bridge.reported.emit(dict(info))

    def run():
        from medloop.app.engine.devices import gui_cpu_threads, thread_budget

        with thread_budget(gui_cpu_threads()):  # the event loop keeps a core while the job runs
            return compute(progress, stop.is_set)

    # superqt's worker (not napari's): errors reach only our handler, not a second notification.
    worker = create_worker(run, _start_thread=False, _ignore_errors=True)
    job = Job(worker=worker, stop=stop, bridge=bridge)

    def errored(exc: Exception) -> None:
        if isinstance(exc, JobCancelled):
            if on_cancelled is not None:
                on_cancelled()
            return
        if on_error is not None:
            on_error(exc)
        else:
            from napari.utils.notifications import show_error

            show_error(str(exc))

    worker.returned.connect(on_done)
    worker.errored.connect(errored)
    if on_finished is not None:
        worker.finished.connect(on_finished)
    worker.start()
    return job
