"""Imports that training needs, done once per process in a background thread when a training
panel opens — not when the user presses Train — and then a frozen garbage-collector heap.

The first ``torch.optim`` optimizer imports ``torch._dynamo`` (about 800 modules, ~1 s; measured
with torch 2.13). Wherever that import runs it holds the interpreter lock in chunks of up to
~130 ms. And with napari, torch and that import in memory, a full garbage collection triggered by
a job's allocations took 300-350 ms, in whichever thread, holding the lock: the GUI froze right
after *Train* in half the runs (measured with a 10 ms timer). ``gc.freeze()`` after the warm-up
moves everything alive then out of the collector's scans, so later collections only walk what
the jobs allocate (worst stall 22-33 ms in five runs).
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_done = threading.Event()
_started = [False]


def warm_up_training() -> threading.Event:
    """Start importing the optimizer machinery in a daemon thread (once); the returned event is set
    when it is done. Later calls return the same event."""
    with _lock:
        if not _started[0]:
            _started[0] = True
            threading.Thread(target=_import_optimizers, name="medloop-warmup", daemon=True).start()
    return _done


def _import_optimizers() -> None:
    import gc

    try:
        import torch

        torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])  # the first optimizer imports torch._dynamo
    finally:
        gc.freeze()
        _done.set()
