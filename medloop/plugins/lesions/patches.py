"""Training patches for the Gupta et al. translator (spec §1, lines 4414-4416).

Lesion patches: for every lesion box a square crop of side ``round(s * max(w, h))`` placed at random
(seeded) so that it contains the box and lies inside the image (boxes whose crop does not fit are
skipped), resized to ``size``. Healthy patches: for every lesion crop, ``n`` healthy partner images
("same body part": any phantom of the healthy pool) cropped with the lesion crop's geometry; patches
whose mean is below 0.15 (no bone) are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medloop.plugins.lesions.checks import LesionInputError, check_scale

#: Healthy patches with a lower mean intensity (image in [0, 1]) show no bone and are dropped.
MIN_PATCH_MEAN = 0.15

Crop = tuple[int, int, int]  # (y0, x0, side): the square [y0, y0 + side) x [x0, x0 + side)


def _crop_for_box(box: Sequence[int], shape: tuple[int, int], s: int, rng: np.random.Generator) -> Crop | None:
    """A random square of side ``round(s * max(w, h))`` containing ``box`` (half-open ``(y0, x0,
    y1, x1)``) and inside ``shape``; None when it cannot fit. (The same rule as ``blend.crop_for_box``.)"""
    y0, x0, y1, x1 = (int(v) for v in box)
    side = int(round(s * max(y1 - y0, x1 - x0)))
    lo_y, hi_y = max(0, y1 - side), min(y0, shape[0] - side)
    lo_x, hi_x = max(0, x1 - side), min(x0, shape[1] - side)
    if hi_y < lo_y or hi_x < lo_x:
        return None
    return int(rng.integers(lo_y, hi_y + 1)), int(rng.integers(lo_x, hi_x + 1)), side


def cut(image: np.ndarray, crop: Crop, size: int) -> np.ndarray:
    """The crop of ``image`` resized (bilinear, anti-aliased when shrinking) to ``size`` x ``size``."""
    from skimage.transform import resize

    y0, x0, side = crop
    patch = np.asarray(image, np.float32)[y0:y0 + side, x0:x0 + side]
    if side == size:
        return patch.copy()
    return resize(patch, (size, size), order=1, anti_aliasing=side > size, preserve_range=True).astype(np.float32)


def _scales(s: int | Sequence[int]) -> list[int]:
    return [check_scale(v) for v in ([s] if isinstance(s, (int, np.integer)) else s)]


def lesion_crops(lesion_phantoms: Sequence[Any], s: int | Sequence[int], rng: np.random.Generator,
                 crops: int = 1) -> list[tuple[int, Crop]]:
    """``(phantom index, crop)`` for every lesion box, scale and repeat whose crop fits the image."""
    scales = _scales(s)
    out = []
    for i, ph in enumerate(lesion_phantoms):
        for box in ph.boxes:
            for scale in scales:
                for _ in range(crops):
                    crop = _crop_for_box(box, ph.image.shape, scale, rng)
                    if crop is not None:
                        out.append((i, crop))
    return out


def translator_patches(
    lesion_phantoms: Sequence[Any],
    healthy_phantoms: Sequence[Any],
    s: int | Sequence[int] = (1, 2),
    n: int = 5,
    size: int = 32,
    seed: int = 0,
    crops: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """``(healthy (N, size, size), lesion (M, size, size))`` float32 training patches: ``crops``
    random crops per lesion box and scale ``s`` (1, 2 or both), and for each lesion crop ``n``
    distinct healthy partners cropped at the same place, minus those with mean < 0.15."""
    _scales(s)
    if not lesion_phantoms or not healthy_phantoms:
        raise LesionInputError(
            f"translator patches need lesion and healthy images; got {len(lesion_phantoms)} and {len(healthy_phantoms)}")
    if not 1 <= int(n) <= len(healthy_phantoms):
        raise LesionInputError(f"n = {n} healthy partners per lesion image; choose 1 to {len(healthy_phantoms)}")
    if int(size) < 4 or int(crops) < 1:
        raise LesionInputError(f"patch size {size} and crops {crops}; use size >= 4 and crops >= 1")
    rng = np.random.default_rng(seed)
    lesion, healthy = [], []
    for index, crop in lesion_crops(lesion_phantoms, s, rng, crops):
        lesion.append(cut(lesion_phantoms[index].image, crop, size))
        y0, x0, side = crop
        for j in rng.choice(len(healthy_phantoms), size=int(n), replace=False):
            image = healthy_phantoms[int(j)].image
            if image.shape[0] < y0 + side or image.shape[1] < x0 + side:
                continue  # a partner smaller than the lesion image cannot hold this crop
            if float(image[y0:y0 + side, x0:x0 + side].mean()) >= MIN_PATCH_MEAN:
                healthy.append(cut(image, crop, size))
    if not lesion or not healthy:
        raise LesionInputError(
            f"no translator patches: {len(lesion)} lesion and {len(healthy)} healthy crops fit; use larger images or s = 1")
    return np.stack(healthy), np.stack(lesion)
