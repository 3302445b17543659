"""Checks that a label map (or any companion image) lies on its image's voxel grid."""

from __future__ import annotations

import numpy as np

from medloop.app.errors import ImageMismatchError
from medloop.app.io.image import MedImage


def _describe(image: MedImage) -> str:
    return image.path or "the label map"


def check_same_grid(image: MedImage, labels: MedImage, tolerance: float = 1e-4) -> None:
    """Raise ``ImageMismatchError`` unless ``labels`` has ``image``'s shape and geometry.

    ``tolerance`` is relative to the voxel size for spacing and origin, absolute for direction
    cosines: headers written by different tools round differently, voxels must still coincide.
    """
    where = f"label map {_describe(labels)} does not match image {_describe(image)}"
    spatial_image, spatial_labels = image.shape[: image.ndim], labels.shape[: labels.ndim]
    if spatial_image != spatial_labels:
        raise ImageMismatchError(
            f"{where}: shape {' x '.join(map(str, spatial_labels))} vs {' x '.join(map(str, spatial_image))}; "
            "resample the label map onto the image grid or open the image it was drawn on"
        )
    scale = float(np.min(image.spacing))
    for name, a, b, tol in (
        ("spacing", labels.spacing, image.spacing, tolerance * scale),
        ("origin", labels.origin, image.origin, tolerance * scale),
        ("direction", labels.direction.ravel(), image.direction.ravel(), tolerance),
    ):
        if not np.allclose(a, b, rtol=0, atol=tol):
            fmt = lambda v: " ".join(f"{x:g}" for x in np.ravel(v))  # noqa: E731
            raise ImageMismatchError(
                f"{where}: {name} {fmt(a)} vs {fmt(b)}; resample the label map onto the image grid "
                "or open the image it was drawn on"
            )
