"""The lesion samples, made by the seeded phantoms (nothing is downloaded or packaged):

* a healthy long-bone radiograph to draw boxes on (*Synthesize lesion*);
* a stack of FLAIR-like brain slices with hyper-intense lesions and their true masks (*Anomaly map*).
"""

from __future__ import annotations

from typing import Any

import numpy as np

BONE_SHAPE = (128, 256)
BONE_SEED = 4
BRAIN_SEED = 16  # three lesions
#: Pixel sizes that make the phantoms about life-size (a 64-px brain slice spans 19 cm).
BONE_MM, BRAIN_MM = 0.5, 3.0


def bone_sample_layers() -> list[tuple[Any, dict[str, Any], str]]:
    """A healthy long-bone radiograph (128 x 256 px at 0.5 mm)."""
    from medloop.plugins.lesions.phantoms import make_phantom

    bone = make_phantom("bone", BONE_SEED, with_lesion=False, shape=BONE_SHAPE)
    kwargs = {"name": "healthy bone (phantom)", "colormap": "gray", "contrast_limits": (0.0, 1.0),
              "scale": (BONE_MM, BONE_MM), "units": ("mm", "mm")}
    return [(bone.image, kwargs, "image")]


def brain_sample_layers() -> list[tuple[Any, dict[str, Any], str]]:
    """A FLAIR-like brain slice (64 x 64 px at 3 mm) with lesions, and the true lesion mask."""
    from medloop.plugins.lesions.phantoms import make_phantom

    brain = make_phantom("brain", BRAIN_SEED)
    image, truth = brain.image, brain.lesion.astype(np.uint8)
    grid = {"scale": (BRAIN_MM, BRAIN_MM), "units": ("mm", "mm")}
    return [(image, {"name": "brain FLAIR (phantom)", "colormap": "gray", "contrast_limits": (0.0, 1.0), **grid}, "image"),
            (truth, {"name": "true lesions", "opacity": 0.5, "visible": False, **grid}, "labels")]
