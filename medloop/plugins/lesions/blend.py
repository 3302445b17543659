"""Gupta et al.'s geometry: the crop around a box, the cosine blend map and the paste.

* crop rule: a square of side ``round(s * max(box height, box width))``, ``s`` in {1, 2}, placed at
  random (seeded) so that it contains the box and lies inside the image;
* blend: ``out = alpha * translated + (1 - alpha) * healthy`` with
  ``alpha(i, j) = cos(|i|^n pi/2) cos(|j|^n pi/2)``, ``i, j = linspace(-1, 1, size)``: 1 at the
  centre, 0 on the border, so the pasted patch meets the image without a seam;
* paste: the blended patch, resized to the crop's side, replaces the crop; every pixel outside the
  crop is the input's own value, bit for bit (a test holds it to that).
"""

from __future__ import annotations

import numpy as np

from medloop.plugins.lesions.checks import LesionInputError, check_box, check_scale

Box = tuple[int, int, int, int]
#: Patches whose mean (image in [0, 1]) is below this show no bone (Gupta et al.).
NO_BONE_MEAN = 0.15


def crop_side(box: Box, s: int) -> int:
    """The crop's side for ``box`` at scale ``s``: round(s * max(height, width))."""
    y0, x0, y1, x1 = box
    return int(round(check_scale(s) * max(y1 - y0, x1 - x0)))


#: Where the crop sits around its box: drawn uniformly among the allowed positions (Gupta et al.),
#: or centred on the box (shifted only to stay inside the image), so that a translator trained on
#: centred lesions puts its lesion in the box the user drew.
PLACEMENTS = ("random", "centred")


def crop_for_box(box: Box, shape: tuple[int, int], s: int, rng: np.random.Generator | int,
                 placement: str = "random") -> Box:
    """A square crop ``(y0, x0, y1, x1)`` of side :func:`crop_side` containing ``box`` and inside an
    image of ``shape``: its position drawn uniformly among those allowed (``rng`` or a seed), or
    with ``placement="centred"`` centred on the box."""
    if placement not in PLACEMENTS:
        raise LesionInputError(f"crop placement {placement!r}; choose random or centred")
    box = check_box(box, shape)
    side = crop_side(box, s)
    height, width = int(shape[0]), int(shape[1])
    if side > height or side > width:
        raise LesionInputError(
            f"the crop for box {box} at s={s} needs {side}x{side} px but the image is {height}x{width}; "
            "draw a smaller box or use s=1")
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    start = []
    for lo, hi, size in ((box[0], box[2], height), (box[1], box[3], width)):
        # The crop [c, c + side) must hold [lo, hi) and lie in [0, size).
        first, last = max(0, hi - side), min(lo, size - side)
        if placement == "centred":
            start.append(int(np.clip(int(np.floor((lo + hi - side) / 2)), first, last)))
        else:
            start.append(int(rng.integers(first, last + 1)))
    return start[0], start[1], start[0] + side, start[1] + side


def cosine_alpha(size: int = 256, n: float = 1.0) -> np.ndarray:
    """The blend map alpha (size, size), float64: cos(|i|^n pi/2) cos(|j|^n pi/2) on linspace(-1, 1)."""
    if size < 2:
        raise LesionInputError(f"blend map size {size}; give at least 2 px")
    if not n > 0:
        raise LesionInputError(f"blend exponent n = {n}; choose a positive value (the paper's is 1)")
    profile = np.cos(np.abs(np.linspace(-1.0, 1.0, size)) ** n * np.pi / 2)
    profile = (profile + profile[::-1]) / 2  # linspace is not exactly symmetric in floating point
    profile[[0, -1]] = 0.0  # cos(pi/2) is 6e-17 in floating point; the border is exactly 0
    return np.outer(profile, profile)


def blend(translated: np.ndarray, healthy: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """alpha * translated + (1 - alpha) * healthy (same-shaped patches)."""
    return alpha * translated + (1.0 - alpha) * healthy


def resize(patch: np.ndarray, side: int) -> np.ndarray:
    """``patch`` (h, w) resized to (side, side), bilinear, float64 (anti-aliased when shrinking)."""
    from skimage.transform import resize as sk_resize

    if patch.shape == (side, side):
        return patch.astype(np.float64)
    shrink = side < patch.shape[0]
    return sk_resize(patch.astype(np.float64), (side, side), order=1, mode="edge",
                     anti_aliasing=shrink, preserve_range=True)


def extract(image: np.ndarray, crop: Box) -> np.ndarray:
    y0, x0, y1, x1 = crop
    return image[y0:y1, x0:x1]


def paste(image: np.ndarray, patch: np.ndarray, crop: Box) -> np.ndarray:
    """A copy of ``image`` with ``patch`` (any square size; resized) in ``crop``; outside the crop
    the copy is the input bit for bit (same dtype; values cast back to it)."""
    y0, x0, y1, x1 = crop
    out = np.array(image, copy=True)
    out[y0:y1, x0:x1] = resize(patch, y1 - y0).astype(out.dtype, copy=False)
    return out


def check_has_bone(patch: np.ndarray, allow: bool = False, minimum: float = NO_BONE_MEAN) -> float:
    """The patch's mean; below ``minimum`` it shows no bone and is refused unless ``allow``."""
    mean = float(np.mean(patch))
    if mean < minimum and not allow:
        raise LesionInputError(
            f"no bone in patch: its mean intensity is {mean:.3f} < {minimum} (image scaled to [0, 1]); "
            "move the box onto the bone, or allow patches without bone")
    return mean
