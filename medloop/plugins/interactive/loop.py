"""What the panel needs around a session, Qt-free: which labels layer is a Correction or Review
target, the background ring a committed object gets in a Correction annotation layer, and crash
recovery (the open object's prompts from the prompt log, replayed through a new session).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from medloop.plugins.interactive.promptlog import LogRow, rows_to_prompt

#: Layer-metadata key of the prompt count and time spent on a Review mask (Review's audit reads it).
PROMPTS_KEY = "medloop_prompts"
CLASSES_KEY = "medloop_classes"  # {stored value: class name}, as medloop.app.io.classes names it
CORRECTION_SUFFIX = " annotations"
REVIEW_SUFFIX = " review mask"


def is_correction_target(name: str, metadata: Mapping[str, Any]) -> bool:
    """A Correction strokes layer: its class legend, named ``<image> annotations``."""
    return bool(metadata.get(CLASSES_KEY)) and name.endswith(CORRECTION_SUFFIX)


def is_review_mask(name: str) -> bool:
    """Review names the editable mask of a case ``<case> review mask``."""
    return name.endswith(REVIEW_SUFFIX)


def background_value(metadata: Mapping[str, Any]) -> int | None:
    """The stored value of the background class in a Correction layer's legend: the class table
    is stored as ``k + class_offset`` (0 = unlabelled), and class 0 is the background."""
    legend = {int(k): str(v) for k, v in (metadata.get(CLASSES_KEY) or {}).items()}
    if not legend:
        return None
    offset = metadata.get("class_offset")
    if offset is not None and int(offset) in legend:
        return int(offset)
    named = [k for k, v in legend.items() if v.lower().startswith("background")]
    return min(named) if named else None


def grid_mismatch(target: str, image: str, target_grid: dict[str, Any], image_grid: dict[str, Any]) -> str | None:
    """The one-line error when a labels layer is not on the image's voxel grid (shape, scale,
    translate, affine), else None."""
    shape_t, shape_i = tuple(target_grid["shape"]), tuple(image_grid["shape"])
    same = shape_t == shape_i and all(
        np.allclose(np.asarray(target_grid[k], float), np.asarray(image_grid[k], float)) for k in ("scale", "translate", "affine"))
    if same:
        return None
    fmt = lambda s: "x".join(str(int(v)) for v in s)  # noqa: E731
    return (f"The target '{target}' is not on the grid of '{image}' ({fmt(shape_t)} voxels vs {fmt(shape_i)}, or another "
            "spacing/position); choose a labels layer made on that image.")


def ring_index(mask: np.ndarray, labels: np.ndarray, spacing: tuple[float, ...], ring_mm: float) -> tuple[np.ndarray, ...]:
    """Unlabelled voxels within ``ring_mm`` (physical, ``spacing`` in array order) of the object
    ``mask``: the background ring a committed object gets. Computed on the object's bounding
    box grown by the ring, so memory stays O(object)."""
    if not mask.any() or ring_mm <= 0:
        return tuple(np.zeros(0, np.intp) for _ in range(mask.ndim))
    where = np.nonzero(mask)
    pad = [int(np.ceil(ring_mm / s)) + 1 for s in spacing]
    box = tuple(slice(max(0, int(w.min()) - p), min(n, int(w.max()) + p + 1)) for w, p, n in zip(where, pad, mask.shape))
    crop = mask[box]
    distance = ndi.distance_transform_edt(~crop, sampling=spacing)
    ring = (distance <= ring_mm) & ~crop & (labels[box] == 0)
    local = np.nonzero(ring)
    return tuple(ix + s.start for ix, s in zip(local, box))


def open_object(rows: list[LogRow]) -> tuple[list[int], int, list[LogRow]]:
    """From a prompt log: the committed object ids, the open object's id and its rows (every
    event after the last commit, which :func:`resume` replays)."""
    committed = [r.object for r in rows if r.event == "commit"]
    last = max((i for i, r in enumerate(rows) if r.event == "commit"), default=-1)
    open_id = (committed[-1] + 1) if committed else (rows[0].object if rows else 1)
    return committed, open_id, rows[last + 1:]


def resume(session: Any, rows: list[LogRow]) -> int:
    """Bring a new session back to where a prompt log ended: the committed objects are already
    in its labels (autosaved); the open object's prompts, undos and redos are replayed through
    the session (its writer applies them). The log keeps its earlier rows and numbering.
    Returns the number of the open object's prompts replayed."""
    committed, open_id, tail = open_object(rows)
    path, session.log_path = session.log_path, None
    session.committed = list(committed)
    session.object.id = open_id
    groups: dict[int, list[LogRow]] = {}
    for r in tail:
        groups.setdefault(r.seq, []).append(r)
    prompts = 0
    for group in groups.values():
        event = group[0].event
        if event == "prompt":
            session.params = replace(session.params, label=group[0].label or session.params.label)
            session.add(rows_to_prompt(group, session.ndim))
            prompts += 1
        elif event in ("undo", "redo", "confirm"):
            getattr(session, event)()
        elif event == "reset":
            session.reset_object()
    session.log = list(rows)
    session._seq = max((r.seq for r in rows), default=0)  # the log's numbering goes on
    session.log_path = path
    return prompts
