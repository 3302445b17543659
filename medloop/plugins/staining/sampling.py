"""Tissue masks and on-the-fly patch sampling for the stain CycleGAN (Paper B, spec §2.2).

Every batch is freshly sampled: patch centres are drawn uniformly from the tissue mask of a
domain's images (all images of the domain pooled). Brightfield slides use an adaptive threshold
with an 11-px window (Paper B); confocal images use Otsu (Paper A). Errors name the domain and
say what to do: no tissue, fewer patch positions than the batch, a patch larger than an image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medloop.app.engine.loop import SeededSource

from medloop.plugins.staining.checks import StainInputError, check_positive, check_rgb

MASKS = ("adaptive", "otsu", "none")


def _grey(image: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2gray

    return rgb2gray(image) if image.ndim == 3 else np.asarray(image, np.float64)


def tissue_mask(image: np.ndarray, method: str = "adaptive", window: int = 11, offset: float = 0.02) -> np.ndarray:
    """Boolean tissue mask of an RGB image in [0, 1] (or a 2-D confocal mode).

    ``"adaptive"`` (brightfield): pixels darker than the mean of their ``window`` x ``window``
    neighbourhood by more than ``offset`` (flat glass has none); ``"otsu"`` (confocal): Otsu on
    the grey value, tissue darker on an RGB rendering and brighter on a raw 2-D mode; ``"none"``:
    every pixel."""
    from skimage.filters import threshold_local, threshold_otsu

    grey = _grey(image)
    if method == "none":
        return np.ones(grey.shape, bool)
    if float(grey.max()) == float(grey.min()):
        return np.zeros(grey.shape, bool)
    if method == "adaptive":
        if window < 3 or window % 2 == 0:
            raise StainInputError(f"adaptive-threshold window {window} must be an odd number of pixels >= 3")
        return grey < threshold_local(grey, window, method="mean", offset=offset)
    if method == "otsu":
        level = threshold_otsu(grey)
        return grey < level if image.ndim == 3 else grey > level
    raise StainInputError(f"tissue mask {method!r} is unknown; choose one of {', '.join(MASKS)}")


def patch_centres(images: Sequence[np.ndarray], mask: str, patch: int, domain: str) -> list[np.ndarray]:
    """Per image, the flat indices of tissue pixels that can centre a ``patch`` x ``patch`` patch."""
    half = patch // 2
    centres = []
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        if patch > h or patch > w:
            raise StainInputError(
                f"patch {patch} px is larger than domain {domain} image {i} ({h}x{w} px); choose a patch of at most {min(h, w)} px")
        fits = np.zeros((h, w), bool)
        fits[half:h - patch + half + 1, half:w - patch + half + 1] = True
        centres.append(np.flatnonzero(tissue_mask(image, mask) & fits))
    return centres


class PatchSampler(SeededSource):
    """``sampler() -> (a, b)``: ``batch`` random patches of each domain as (N, 3, p, p) float32
    tensors in [-1, 1], centres uniform over the tissue masks, flipped at random; the random state
    is checkpointed with the run (``state_dict``)."""

    def __init__(self, domain_a: Sequence[np.ndarray], domain_b: Sequence[np.ndarray], patch: int = 64, batch: int = 6,
                 masks: tuple[str, str] = ("otsu", "adaptive"), seed: int = 0) -> None:
        check_positive(patch=patch, batch=batch)
        self.patch, self.batch = int(patch), int(batch)
        self.domains = []
        for name, images, mask in (("A", domain_a, masks[0]), ("B", domain_b, masks[1])):
            if len(images) == 0:
                raise StainInputError(f"domain {name} has no images; give at least one image per domain")
            checked = [check_rgb(im, f"domain {name} image {i}").astype(np.float32) for i, im in enumerate(images)]
            centres = patch_centres(checked, mask, self.patch, name)
            count = sum(len(c) for c in centres)
            if count == 0:
                raise StainInputError(
                    f"domain {name} has no tissue where a {self.patch} px patch fits ({mask} mask); check the images or use mask 'none'")
            if count < self.batch:
                raise StainInputError(
                    f"domain {name} has {count} tissue patch positions, fewer than the batch of {self.batch}; "
                    "use larger images, a smaller patch or a smaller batch")
            self.domains.append((checked, centres, np.array([len(c) for c in centres], np.float64) / count))
        self.rng = np.random.default_rng(seed)

    def _draw(self, domain: int) -> np.ndarray:
        images, centres, weights = self.domains[domain]
        rng, p, half = self.rng, self.patch, self.patch // 2
        out = np.empty((self.batch, p, p, 3), np.float32)
        for k in range(self.batch):
            i = int(rng.choice(len(images), p=weights))
            r, c = np.unravel_index(int(centres[i][rng.integers(len(centres[i]))]), images[i].shape[:2])
            patch = images[i][r - half:r - half + p, c - half:c - half + p]
            patch = patch[::-1] if rng.random() < 0.5 else patch
            out[k] = patch[:, ::-1] if rng.random() < 0.5 else patch
        return out

    def __call__(self) -> tuple[Any, Any]:
        from medloop.plugins.staining.cyclegan import to_tensor

        return to_tensor(self._draw(0)), to_tensor(self._draw(1))

