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

__all__ = ["MedImage", "MedloopError", "__version__", "read_image"]


def read_image(path) -> "MedImage":
    """Read an image file (or DICOM folder) into a :class:`MedImage` with its full geometry."""
    from medloop.app.io.read import read_image as _read

    return _read(path)


def __getattr__(name: str):
    if name == "MedImage":
        from medloop.app.io.image import MedImage

        return MedImage
    raise AttributeError(f"module 'medloop' has no attribute {name!r}")
