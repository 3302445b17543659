"""Turn medloop layer data tuples into napari layers."""

from __future__ import annotations

from typing import Any

import numpy as np

from medloop.app.io.classes import CLASSES_KEY, CONTOUR_KEY, label_style, stored_classes
from medloop.app.io.image import MedImage


def add_layer_data(viewer, layer_data: list[tuple[Any, dict[str, Any], str]]) -> list:
    """Add ``(data, kwargs, layer_type)`` tuples to ``viewer``; returns the new layers."""
    added = []
    for data, kwargs, layer_type in layer_data:
        layer = getattr(viewer, f"add_{layer_type}")(data, **kwargs)
        contour = layer.metadata.get(CONTOUR_KEY)
        if contour and layer_type == "labels":
            layer.contour = int(contour)
        added.append(layer)
    return added




def layer_image(layer) -> MedImage:
    """The MedImage behind an image layer: its source if medloop read it, else its transform."""
    source = layer.metadata.get("medloop_image")
    if isinstance(source, MedImage) and source.shape == tuple(np.shape(layer.data)):
        return source
    rgb = bool(getattr(layer, "rgb", False))
    data = np.asarray(layer.data)
    affine = layer.affine.affine_matrix
    return MedImage.from_layer(data, layer.scale, layer.translate, None if np.allclose(affine, np.eye(len(affine))) else affine, channel_axis=rgb)


def class_layer_kwargs(classes: dict[int, str], offset: int = 0, **style: Any) -> dict[str, Any]:
    """``colormap``, ``features`` (hover name) and metadata class table of a Labels layer showing
    ``classes`` (stored as ``k + offset``): the one helper every label layer is built with."""
    kwargs = label_style(classes, offset, **style)
    kwargs["metadata"] = {CLASSES_KEY: stored_classes(classes, offset), "classes": dict(classes), "class_offset": offset}
    return kwargs


def style_labels(layer, classes: dict[int, str], offset: int = 0, **style: Any) -> None:
    """Give an existing Labels layer the class table's colours, hover names and metadata."""
    kwargs = class_layer_kwargs(classes, offset, **style)
    layer.colormap = kwargs["colormap"]
    layer.features = kwargs["features"]
    layer.metadata.update(kwargs["metadata"])
