"""napari reader contribution: images open at their physical position, errors notify."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from medloop.app.errors import MedloopError
from medloop.app.io.read import VOLUME_SUFFIXES, suffix_of

LayerData = list[tuple[Any, dict[str, Any], str]]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], LayerData] | None:
    """Return a reader for files medloop owns, else None (never raises into napari)."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or any(suffix_of(Path(p)) not in VOLUME_SUFFIXES for p in paths):
        return None
    return read_layers


def read_layers(path: str | list[str]) -> LayerData:
    """Layer data tuples with geometry; a bad file becomes a notification, not an exception."""
    from medloop.app.io.read import read_image

    paths = [path] if isinstance(path, str) else list(path)
    layers: LayerData = []
    for p in paths:
        try:
            image = read_image(p)
        except MedloopError as exc:
            from napari.utils.notifications import show_error

            show_error(str(exc))
            continue
        kwargs = {"name": Path(p).name.split(".")[0], "metadata": {"medloop_image": image}}
        layers.append((image.array, {**kwargs, **image.layer_kwargs()}, "image"))
    return layers
