"""Box → lesion (Gupta et al.): crop around the box, translate, cosine-blend, paste, score.

:func:`synthesize_lesions` is the one path the panel, the CLI and the batch augmenter run. For each
box (in order): the crop rule picks a square around it (seeded by ``seed + index``), the crop is
scaled to [0, 1] by the image's own range, resized to the translator's patch size and translated;
the translation is resized back to the crop and blended with the crop at full resolution by the
cosine map (so where alpha is 0 the crop keeps its own pixels, not a resampled copy), then pasted.
Outside the crops the output equals the input bit for bit. A filter classifier, if given, scores
the whole result; with a threshold ``t`` the result is *kept* when its score >= t (the paper's
pseudo-label filter). The derived pseudo-mask is |out − in| > tau · range inside each box.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from medloop.plugins.lesions.blend import (
    Box, check_has_bone, cosine_alpha, crop_for_box, extract, resize,
)
from medloop.plugins.lesions.checks import LesionInputError, check_box, check_image_2d, check_scale, check_threshold
from medloop.plugins.lesions.translators import Translator

METHOD = "gupta-box-to-lesion"


class Scorer(Protocol):
    """A filter classifier: (N, H, W) float32 images in [0, 1] → (N,) lesion probabilities."""

    name: str

    def score(self, images: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class SynthesisParams:
    """``s`` crop scale (1 or 2), ``n`` blend exponent, ``seed``, ``threshold`` t of the score filter
    (None: no filter), ``allow_no_bone`` to paste into patches darker than 0.15 on average,
    ``mask_tau`` the pseudo-mask's change threshold as a fraction of the image's range,
    ``placement`` of the crop around the box (None: what the translator was trained with)."""

    s: int = 2
    n: float = 1.0
    seed: int = 0
    threshold: float | None = None
    allow_no_bone: bool = False
    mask_tau: float = 0.05
    placement: str | None = None  # "random", "centred", or None: the translator's own (its card's)

    def checked(self) -> SynthesisParams:
        check_scale(self.s)
        if self.threshold is not None:
            check_threshold(self.threshold)
        if not self.n > 0:
            raise LesionInputError(f"blend exponent n = {self.n}; choose a positive value (the paper's is 1)")
        if not 0 < self.mask_tau < 1:
            raise LesionInputError(f"pseudo-mask threshold tau = {self.mask_tau}; choose a value in (0, 1)")
        return self


@dataclass
class SynthesisResult:
    """The output image (input dtype), one crop per box, the derived pseudo-mask (uint8), the
    filter's score and kept flag (None without a filter) and the provenance record."""

    image: np.ndarray
    boxes: list[Box]
    crops: list[Box]
    pseudo_mask: np.ndarray
    score: float | None
    kept: bool | None
    provenance: dict[str, Any] = field(default_factory=dict)


def _value_range(image: np.ndarray) -> tuple[float, float]:
    return float(image.min()), float(image.max())


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def translate_crop(unit: np.ndarray, crop: Box, translator: Translator, n: float, seed: int) -> np.ndarray:
    """The blended crop (crop-sized, [0, 1] scale) for ``unit`` (the image scaled to [0, 1])."""
    patch = extract(unit, crop).astype(np.float64)
    side = patch.shape[0]
    small = resize(patch, translator.size).astype(np.float32)
    translated = np.asarray(translator.translate(small[None], seed=seed), dtype=np.float64)
    if translated.shape != (1, translator.size, translator.size):
        raise LesionInputError(
            f"translator {translator.name} returned shape {translated.shape}, expected (1, {translator.size}, {translator.size})")
    alpha = cosine_alpha(side, n)
    return alpha * resize(translated[0], side) + (1.0 - alpha) * patch


def synthesize_lesions(
    image: Any, boxes: list[Box], translator: Translator | None, params: SynthesisParams = SynthesisParams(),
    scorer: Scorer | None = None, name: str = "image",
) -> SynthesisResult:
    """Lesions in every box of ``image`` (2-D greyscale, any numeric dtype); the source is not modified."""
    started = time.perf_counter()
    params = params.checked()
    if translator is None:
        raise LesionInputError("no translator loaded; choose a lesion translator model first")
    if not boxes:
        raise LesionInputError(f"no box on {name}; draw a rectangle around where the lesion should appear")
    source = np.asarray(image)
    values = check_image_2d(source, name).astype(np.float64)
    lo, hi = _value_range(values)
    boxes = [check_box(b, values.shape, f"box {i + 1}") for i, b in enumerate(boxes)]
    placement = params.placement or getattr(translator, "placement", "random")
    crops = [crop_for_box(b, values.shape, params.s, params.seed + i, placement) for i, b in enumerate(boxes)]
    unit = (values - lo) / (hi - lo)
    for i, crop in enumerate(crops):
        check_has_bone(extract(unit, crop), params.allow_no_bone)
        y0, x0, y1, x1 = crop
        unit[y0:y1, x0:x1] = translate_crop(unit, crop, translator, params.n, params.seed + i)
    out = np.array(source, copy=True)
    changed = np.zeros(values.shape, np.float64)
    mask = np.zeros(values.shape, np.uint8)
    for (y0, x0, y1, x1), (b0, c0, b1, c1) in zip(crops, boxes):
        out[y0:y1, x0:x1] = _to_dtype(unit[y0:y1, x0:x1] * (hi - lo) + lo, source.dtype)
        changed[y0:y1, x0:x1] = np.abs(out[y0:y1, x0:x1].astype(np.float64) - values[y0:y1, x0:x1])
        mask[b0:b1, c0:c1] |= (changed[b0:b1, c0:c1] > params.mask_tau * (hi - lo)).astype(np.uint8)
    score = kept = None
    if scorer is not None:
        score = float(scorer.score(((out.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)[None])[0])
        kept = None if params.threshold is None else bool(score >= params.threshold)
    provenance = {
        "method": METHOD, "translator": translator.name, "translator_sha256": getattr(translator, "sha256", None),
        "scorer": getattr(scorer, "name", None), "params": asdict(params), "boxes": [list(b) for b in boxes],
        "crops": [list(c) for c in crops], "placement": placement, "value_range": [lo, hi], "score": score, "kept": kept,
        "seconds": round(time.perf_counter() - started, 4),
    }
    return SynthesisResult(out, boxes, crops, mask, score, kept, provenance)


@dataclass(frozen=True)
class SynthesisSetup:
    """What makes lesions, bundled for the batch paths: the translator, the parameters and the
    optional filter classifier."""

    translator: Translator | None
    params: SynthesisParams = SynthesisParams()
    scorer: Scorer | None = None
