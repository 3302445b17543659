"""Training patches for the Gupta et al. translator (spec §1, lines 4414-4416).

Lesion patches: for every lesion box a square crop of side ``round(s * max(w, h))`` placed at random
(seeded) so that it contains the box and lies inside the image (boxes whose crop does not fit are
skipped), resized to ``size``. Healthy patches: for every lesion crop, ``n`` healthy partner images
cropped with the lesion crop's geometry; patches whose mean is below 0.15 (no bone) are dropped.
The paper picks "similar" healthy images without saying how; here the partners are the ``n`` of a
random pool whose anatomy (bone) inside the crop overlaps the lesion image's the most (Dice), so
both domains show the same kind of scene (bone across the patch) and the translator learns the
lesion rather than moving the bone (measured: random partners gave dark smears and shifted cortex).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medloop.plugins.lesions.checks import LesionInputError, check_scale

#: Healthy patches with a lower mean intensity (image in [0, 1]) show no bone and are dropped.
MIN_PATCH_MEAN = 0.15

Crop = tuple[int, int, int]  # (y0, x0, side): the square [y0, y0 + side) x [x0, x0 + side)


def _crop_for_box(box: Sequence[int], shape: tuple[int, int], s: int, rng: np.random.Generator,
                  placement: str = "random") -> Crop | None:
    """:func:`~medloop.plugins.lesions.blend.crop_for_box` as ``(y0, x0, side)``; None when the
    crop does not fit the image (or the box is too small)."""
    from medloop.plugins.lesions.blend import crop_for_box

    try:
        y0, x0, y1, _ = crop_for_box(tuple(int(v) for v in box), shape, s, rng, placement)
    except LesionInputError:
        return None
    return y0, x0, y1 - y0


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
                 crops: int = 1, placement: str = "random") -> list[tuple[int, Crop]]:
    """``(phantom index, crop)`` for every lesion box, scale and repeat whose crop fits the image
    (a centred crop is the same every repeat, so it is taken once)."""
    scales = _scales(s)
    out = []
    for i, ph in enumerate(lesion_phantoms):
        for box in ph.boxes:
            for scale in scales:
                for _ in range(crops if placement == "random" else 1):
                    crop = _crop_for_box(box, ph.image.shape, scale, rng, placement)
                    if crop is not None:
                        out.append((i, crop))
    return out


def similar_partners(lesion: Any, healthy: Sequence[Any], crop: Crop, n: int, rng: np.random.Generator,
                     pool: int = 40) -> list[int]:
    """The ``n`` healthy images (indices) of a random pool of ``pool`` whose anatomy inside ``crop``
    overlaps ``lesion``'s the most (Dice); images too small for the crop are skipped."""
    y0, x0, side = crop
    window = (slice(y0, y0 + side), slice(x0, x0 + side))
    mine = np.asarray(lesion.anatomy)[window]
    scored = []
    for j in rng.choice(len(healthy), size=min(pool, len(healthy)), replace=False):
        other = np.asarray(healthy[int(j)].anatomy)
        if other.shape[0] < y0 + side or other.shape[1] < x0 + side:
            continue  # a partner smaller than the lesion image cannot hold this crop
        theirs = other[window]
        total = int(mine.sum()) + int(theirs.sum())
        scored.append((2.0 * int((mine & theirs).sum()) / total if total else 1.0, int(j)))
    return [j for _, j in sorted(scored, key=lambda v: -v[0])[:n]]


def translator_patches(
    lesion_phantoms: Sequence[Any],
    healthy_phantoms: Sequence[Any],
    s: int | Sequence[int] = (1, 2),
    n: int = 5,
    size: int = 32,
    seed: int = 0,
    crops: int = 1,
    placement: str = "random",
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
    for index, crop in lesion_crops(lesion_phantoms, s, rng, crops, placement):
        lesion.append(cut(lesion_phantoms[index].image, crop, size))
        for j in similar_partners(lesion_phantoms[index], healthy_phantoms, crop, int(n), rng):
            image = healthy_phantoms[j].image
            y0, x0, side = crop
            if float(image[y0:y0 + side, x0:x0 + side].mean()) >= MIN_PATCH_MEAN:
                healthy.append(cut(image, crop, size))
    if not lesion or not healthy:
        raise LesionInputError(
            f"no translator patches: {len(lesion)} lesion and {len(healthy)} healthy crops fit; use larger images or s = 1")
    return np.stack(healthy), np.stack(lesion)
