"""napari reader and writer contributions: images land at their physical position, label
layers are written back with their source geometry, and bad files become notifications."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from medloop.app.errors import MedloopError
from medloop.app.io.image import MedImage

LayerData = list[tuple]
# napari's "this file held nothing" answer: no layer and no error dialog.
NOTHING_READ: LayerData = [(None,)]
LABEL_NAME_HINTS = ("label", "seg", "mask", "annot", "tissue", "truth", "_gt")


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], LayerData] | None:
    """A reader for files and DICOM folders medloop owns, else None (never raises into napari)."""
    try:
        paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
        return read_layers if paths and all(_owns(p) for p in paths) else None
    except Exception:  # a reader probe must never break napari's open dialog
        return None


def _owns(p: Path) -> bool:
    from medloop.app.io.read import suffix_of, supported_suffixes
    from medloop.app.io.sniff import sniff

    if p.is_dir():
        return any(f.is_file() and sniff(f) == "dicom" for f in sorted(p.iterdir())[:20])
    return suffix_of(p) in supported_suffixes() or (p.is_file() and p.suffix == "" and sniff(p) == "dicom")


def read_layers(path: str | list[str]) -> LayerData:
    """Layer data tuples with geometry; each unreadable input is a notification, not an error."""
    from napari.utils.notifications import show_error

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers: LayerData = []
    for p in map(Path, paths):
        for read in _readers(p):
            try:
                layers.append(image_layer_data(read()))
            except MedloopError as exc:  # one bad series or file must not hide the others
                show_error(str(exc))
    return layers or NOTHING_READ


def _readers(p: Path) -> list[Callable[[], MedImage]]:
    """One deferred read per layer: each series of a DICOM folder, or the file."""
    from medloop.app.io.read import read_image

    if p.is_dir():
        from medloop.app.io.dicom import list_dicom_series

        try:
            series = list_dicom_series(p)
        except MedloopError as exc:
            return [lambda exc=exc: _raise(exc)]
        return [lambda uid=s.uid: read_image(p, series=uid) for s in series]
    return [lambda: read_image(p)]


def _raise(exc: Exception):
    raise exc


def layer_name(image: MedImage) -> str:
    if image.metadata.get("name"):
        return str(image.metadata["name"])
    return Path(image.path).name.split(".")[0] if image.path else "image"


def looks_like_labels(image: MedImage) -> bool:
    """Integer images named like a mask open as Labels layers."""
    name = Path(image.path or "").name.lower()
    return image.dtype.kind in "iub" and not image.channel_axis and any(h in name for h in LABEL_NAME_HINTS)


def image_layer_data(image: MedImage, name: str | None = None) -> tuple[Any, dict[str, Any], str]:
    """One ``(data, kwargs, layer_type)`` tuple placing ``image`` at its physical position."""
    kwargs = {"name": name or layer_name(image), "metadata": {"medloop_image": image}, **image.layer_kwargs()}
    if looks_like_labels(image):
        kwargs.pop("rgb", None)
        # No class table in a label file: number k gets class k's colour (the one class table's
        # numbering), never napari's random colours, and hovers as "class k".
        from medloop.app.io.classes import CLASSES_KEY, default_classes, label_style

        top = int(np.max(image.array)) if image.array.size else 0
        classes = default_classes(range(1, min(top, 255) + 1))
        kwargs.update(label_style(classes))
        kwargs["metadata"][CLASSES_KEY] = classes
        return image.layer_data(), kwargs, "labels"
    return image.layer_data(), kwargs, "image"


def layer_geometry_image(data: Any, meta: dict[str, Any]) -> MedImage:
    """The MedImage a layer stands for: its source geometry if medloop opened it, else the
    geometry encoded in the layer's scale, translate and affine."""
    source = (meta.get("metadata") or {}).get("medloop_image")
    layer_image = MedImage.from_layer(np.asarray(data), meta["scale"], meta["translate"], meta.get("affine"))
    if isinstance(source, MedImage) and source.shape[: source.ndim] == layer_image.shape[: layer_image.ndim]:
        # Keep the source's exact numbers (float round trips through the affine can differ by 1 ulp).
        if np.allclose(source.affine_xyz(), layer_image.affine_xyz(), atol=1e-9):
            return source.with_array(np.asarray(data))
    return layer_image


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for Labels: NIfTI/NRRD/MHA/TIFF with the source geometry."""
    from medloop.app.io.write import write_image

    image = layer_geometry_image(data, meta)
    return [str(write_image(image, path))]
