"""medloop: review, correct and retrain medical-image models in napari.

The public API is small and imports nothing heavy at package import time, so that napari
starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medloop._version import __version__
from medloop.app.errors import MedloopError

if TYPE_CHECKING:
    from medloop.app.io.image import MedImage

__all__ = ["MedImage", "MedloopError", "__version__", "read_image", "write_image"]


def read_image(path, series: str | None = None, allow_irregular: bool = False) -> "MedImage":
    """Read an image file (or DICOM folder) into a :class:`MedImage` with its full geometry.

    See :func:`medloop.app.io.read.read_image` for the arguments.
    """
    from medloop.app.io.read import read_image as _read

    return _read(path, series=series, allow_irregular=allow_irregular)


def write_image(image: "MedImage", path):
    """Write ``image`` atomically to NIfTI/NRRD/MHA/TIFF with its geometry; returns the path."""
    from medloop.app.io.write import write_image as _write

    return _write(image, path)


def __getattr__(name: str):
    if name == "MedImage":
        from medloop.app.io.image import MedImage

        return MedImage
    raise AttributeError(f"module 'medloop' has no attribute {name!r}")
