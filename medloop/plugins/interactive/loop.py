"""What the panel needs around a session, Qt-free: which labels layer is a Correction or Review
target, the background class of a Correction legend, the grid check, and which part of a prompt
log is still open (crash recovery itself is :meth:`PromptSession.resume`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


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
