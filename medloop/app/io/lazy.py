"""Computing lazy (dask) arrays where we are: in this process's threads.

dask's default picks a ``distributed`` client when one exists (and imports ``distributed`` to
look for one). A cohort worker segmenting a slide must read its own tiles locally rather than
send them back to the scheduler as new tasks, so every compute of image data goes through here.
"""

from __future__ import annotations

from typing import Any


def is_lazy(array: Any) -> bool:
    """True for a dask array (anything with a dask graph)."""
    return hasattr(array, "__dask_graph__")


def compute_here(*arrays: Any) -> tuple[Any, ...]:
    """The arrays computed with dask's threaded scheduler (numpy arrays pass through)."""
    lazy = [i for i, a in enumerate(arrays) if is_lazy(a)]
    if not lazy:
        return tuple(arrays)
    import dask
    import dask.threaded

    # A callable scheduler: dask then neither looks for nor imports a distributed client.
    done = dask.compute(*(arrays[i] for i in lazy), scheduler=dask.threaded.get)
    out = list(arrays)
    for i, value in zip(lazy, done):
        out[i] = value
    return tuple(out)
