"""Turn medloop layer data tuples into napari layers."""

from __future__ import annotations

from typing import Any


def add_layer_data(viewer, layer_data: list[tuple[Any, dict[str, Any], str]]) -> list:
    """Add ``(data, kwargs, layer_type)`` tuples to ``viewer``; returns the new layers."""
    added = []
    for data, kwargs, layer_type in layer_data:
        added.append(getattr(viewer, f"add_{layer_type}")(data, **kwargs))
    return added
