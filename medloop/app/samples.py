"""Packaged sample data (Qt-free), exposed to napari through the manifest's sample_data."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from medloop.app.errors import ResourceError
from medloop.app.io.classes import CLASSES_KEY, CONTOUR_KEY, label_style
from medloop.app.io.hashing import sha256_file
from medloop.app.io.image import MedImage

TISSUE_CLASSES = {0: "background", 1: "grey matter", 2: "white matter"}


def sample_dir() -> Path:
    """Folder holding the packaged sample images, their manifest and licence."""
    return Path(str(files("medloop") / "resources" / "sample"))


def sample_manifest() -> dict[str, Any]:
    """The sample manifest: file names, sha256 sums, provenance."""
    path = sample_dir() / "manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResourceError(f"sample manifest {path} is missing or damaged ({exc}); reinstall medloop") from None


def sample_path(key: str) -> Path:
    """Path of one packaged sample file (``"t1"`` or ``"tissue"``), checked against its sha256."""
    entry = sample_manifest()["files"].get(key)
    if entry is None:
        raise ResourceError(f"no packaged sample named {key!r}; known: {sorted(sample_manifest()['files'])}")
    path = sample_dir() / entry["name"]
    if not path.is_file():
        raise ResourceError(f"sample file {path} is missing; reinstall medloop")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise ResourceError(f"sample file {path} is damaged (sha256 mismatch); reinstall medloop")
    return path


def load_brain_sample() -> tuple[MedImage, MedImage]:
    """The 2 mm MNI152 2009 T1 brain and its tissue labels (0 bg, 1 grey, 2 white matter)."""
    from medloop.app.io.read import read_image

    t1 = read_image(sample_path("t1"))
    tissue = read_image(sample_path("tissue"))
    return t1, tissue


def brain_sample_layers() -> list[tuple[Any, dict[str, Any], str]]:
    """napari layer data tuples for the brain sample, placed at their physical positions."""
    t1, tissue = load_brain_sample()
    image_kwargs = {
        "name": "MNI152 T1 (2 mm)",
        "colormap": "gray",
        "metadata": {"medloop_image": t1},
        **t1.layer_kwargs(),
    }
    # The reference: the class table's colours, opened hidden and drawn as outlines (CONTOUR_KEY,
    # applied by medloop's add_layer_data) so that it never looks like a model's output.
    label_kwargs = {
        "name": "tissue labels",
        "opacity": 0.8,
        "visible": False,
        **label_style(TISSUE_CLASSES),
        "metadata": {"medloop_image": tissue, "classes": TISSUE_CLASSES, CLASSES_KEY: dict(TISSUE_CLASSES), CONTOUR_KEY: 1},
        **tissue.layer_kwargs(),
    }
    return [(t1.array, image_kwargs, "image"), (tissue.array, label_kwargs, "labels")]
