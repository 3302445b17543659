"""The Qt-free inference engine: device choice, tiled inference, whole-slide segmentation and
image-to-image translation.

Importing this package is cheap; torch (and dask) load when a name from ``devices`` or
``tiling`` is first used, so the GUI can import :class:`JobCancelled` without them.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from medloop.app.engine.jobs import JobCancelled, Progress, ShouldStop, check_stop

_LAZY = {
    "DeviceError": "devices",
    "autocast_for": "devices",
    "available_devices": "devices",
    "choose_device": "devices",
    "importance_map": "tiling",
    "kept_centre_grid": "tiling",
    "predict_labels": "tiling",
    "SlideParams": "tiling",
    "TilingParams": "tiling",
    "TranslationParams": "tiling",
    "segment_level": "tiling",
    "segment_slide": "tiling",
    "sliding_window_inference": "tiling",
    "tile_grid": "tiling",
    "tiled_inference": "tiling",
    "tiling_grid": "tiling",
    "translate_level": "tiling",
}

__all__ = ["JobCancelled", "Progress", "ShouldStop", "check_stop", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
