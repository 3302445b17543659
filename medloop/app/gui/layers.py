"""Turn medloop layer data tuples into napari layers."""

from __future__ import annotations

from typing import Any

import numpy as np

from medloop.app.io.image import MedImage


def add_layer_data(viewer, layer_data: list[tuple[Any, dict[str, Any], str]]) -> list:
    """Add ``(data, kwargs, layer_type)`` tuples to ``viewer``; returns the new layers."""
    added = []
    for data, kwargs, layer_type in layer_data:
        added.append(getattr(viewer, f"add_{layer_type}")(data, **kwargs))
    return added


# Class colours: background transparent, then a colour-blind-safe palette.
PALETTE = ["#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7", "#999999"]


def layer_image(layer) -> MedImage:
    """The MedImage behind an image layer: its source if medloop read it, else its transform."""
    source = layer.metadata.get("medloop_image")
    if isinstance(source, MedImage) and source.shape == tuple(np.shape(layer.data)):
        return source
    rgb = bool(getattr(layer, "rgb", False))
    data = np.asarray(layer.data)
    affine = layer.affine.affine_matrix
    return MedImage.from_layer(data, layer.scale, layer.translate, None if np.allclose(affine, np.eye(len(affine))) else affine, channel_axis=rgb)


def class_colors(classes: dict[int, str]) -> dict[Any, str]:
    colors: dict[Any, str] = {None: "transparent", 0: "transparent"}
    for k in classes:
        if k:
            colors[k] = PALETTE[(k - 1) % len(PALETTE)]
    return colors
