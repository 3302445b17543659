"""Seeded synthetic volumes with awkward geometry (anisotropic, offset, oblique)."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from medloop.app.io.image import MedImage

OBLIQUE = Rotation.from_euler("xyz", [12.0, -7.5, 31.0], degrees=True).as_matrix()


def oblique_volume(dtype=np.int16, shape=(9, 11, 13), seed: int = 0) -> MedImage:
    """A random volume with spacing (0.7, 1.3, 3.1) mm, a non-zero origin and an oblique direction."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        data = rng.normal(100, 30, size=shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        data = rng.integers(max(info.min, -2000), min(info.max, 3000), size=shape, endpoint=True).astype(dtype)
    return MedImage(
        array=data, spacing=(0.7, 1.3, 3.1), origin=(-101.25, 37.5, -12.125), direction=OBLIQUE, path=None
    )


def label_volume(shape=(9, 11, 13), seed: int = 1) -> MedImage:
    rng = np.random.default_rng(seed)
    base = oblique_volume(shape=shape)
    return base.with_array(rng.integers(0, 4, size=shape).astype(np.uint8))
