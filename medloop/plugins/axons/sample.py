"""The axon-tracking sample: a synthetic two-photon-like image (SI preset) with three axons and
their true centrelines, made by the seeded generator (nothing is downloaded or packaged)."""

from __future__ import annotations

from typing import Any

import numpy as np

SAMPLE_SIZE = 128
SAMPLE_AXONS = 3
SAMPLE_SEED = 2  # three axons, two of them crossing
SAMPLE_NAME = "axons (SI)"
TRUTH_NAME = "true centrelines"
#: Image layer metadata key: the image is synthetic (the tracker's window scale is then 1.0).
SYNTHETIC_KEY = "axons_synthetic"


def sample_axons(size: int = SAMPLE_SIZE, n: int = SAMPLE_AXONS, seed: int = SAMPLE_SEED) -> tuple[np.ndarray, list[np.ndarray]]:
    """(image, true centrelines): ``n`` SI axons drawn noise-free, summed over one background
    (fluorescence adds up where axons cross), then the SI preset's Gaussian noise."""
    from medloop.plugins.axons.synth import make_batch, params_for, with_params

    si = params_for("SI")
    clean = make_batch(n, size, with_params(si, noise="none"), seed)
    image = si.background + sum(a.image - si.background for a in clean)
    image = image + np.random.default_rng([seed, n]).normal(0.0, si.noise_sd, size=image.shape)
    return image.astype(np.float32), [a.centreline for a in clean]


def axon_sample_layers() -> list[tuple[Any, dict[str, Any], str]]:
    """napari layer data: the image and its true centrelines (a Shapes layer of paths, drawn
    thin and dashed-looking in a muted colour, hidden at first so it does not give the answer
    away; show it to compare)."""
    image, truth = sample_axons()
    image_kwargs = {
        "name": SAMPLE_NAME, "colormap": "gray", "metadata": {SYNTHETIC_KEY: True},
        "contrast_limits": (float(np.percentile(image, 0.5)), float(np.percentile(image, 99.8))),
    }
    truth_kwargs = {
        "name": TRUTH_NAME, "shape_type": "path", "edge_color": "#56b4e9", "edge_width": 0.3,
        "opacity": 0.7, "visible": False, "features": {"axon": np.arange(len(truth))},
    }
    return [(image, image_kwargs, "image"), (truth, truth_kwargs, "shapes")]
