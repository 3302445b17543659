"""What an engine receives and returns: the contract between the session and the engines.

The session crops a region of interest (ROI), maps every prompt of the current object into
that crop's voxel indices (array order), and asks an engine for the object's mask in the crop.
Engines are Qt-free and never see the whole image; a zoomed-out ROI (over the voxel budget)
arrives with its coarser ``spacing``, so engines reason in millimetres.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from medloop.plugins.interactive.params import InteractiveParams


@dataclass(frozen=True)
class RoiPoint:
    """A click in ROI voxel indices (array order)."""

    index: tuple[int, ...]
    positive: bool


@dataclass
class EngineInput:
    """One request: the object's prompts so far (the last one is new) inside a ROI crop.

    ``image`` is float32 in the image's own intensity units; ``spacing`` is mm per voxel in
    array order; ``previous`` is the object before this prompt; ``locked`` marks voxels the
    object may not take (other classes). ``state`` is the engine's memory for this object (for
    example the intensity range fixed at click 1): the engine may update it and the session
    restores it on undo. ``box`` is (lo, hi) inclusive-exclusive indices or None;
    ``scribbles`` is int8 (1 positive, 2 negative) or None.
    """

    image: np.ndarray
    spacing: tuple[float, ...]
    points: tuple[RoiPoint, ...]
    previous: np.ndarray
    locked: np.ndarray
    params: InteractiveParams
    state: dict[str, Any] = field(default_factory=dict)
    box: tuple[np.ndarray, np.ndarray] | None = None
    scribbles: np.ndarray | None = None
    # The full image's intensity statistics (p1, p99) so crops normalise alike.
    intensity_range: tuple[float, float] = (0.0, 1.0)


class Engine(Protocol):
    """An engine turns prompts into the object's mask inside the ROI (a bool array)."""

    name: str
    #: voxel budget of a ROI this engine works on at native resolution
    budget_voxels: int

    def segment(self, request: EngineInput, should_stop: Callable[[], bool] | None = None) -> np.ndarray: ...
