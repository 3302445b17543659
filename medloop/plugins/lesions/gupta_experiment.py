"""Gupta et al.'s augmentation experiment at CPU scale, with its controls (spec §1).

Data (:func:`bone_data`): long-bone phantoms 64 x 128; train 30 lesion : 300 normal, validation
15 : 150, test 50 : 500 (the paper's test ratio), three disjoint seeded sets.

:func:`run_gupta_experiment`:

1. the baseline classifier is trained on the real training images (best state by validation AUC);
2. synthetic positives: ``synthetic_per_lesion`` x (number of real lesion images) healthy
   training images get one box each, its size drawn from the real lesion boxes' size library and
   placed inside the bone (:class:`~.augment.LesionAugmenter`), and go through the translator;
   the baseline scores them;
3. for each t, the synthetic images scoring >= t are added as positives and the classifier is
   retrained from scratch (same config and seed); t is chosen on validation AUC;
4. test AUC of baseline vs the augmented model at the chosen t, with the paired bootstrap.

Identity-paste control: the same healthy images, boxes, crops, alpha and seeds, but the
:class:`~.translators.IdentityTranslator` (the untranslated patch pasted back), labelled
positive, **filtered by the same rule** (baseline score >= t, t chosen on validation AUC from the
same grid), so it differs from the real augmentation only in the translator. Because a filtered
identity paste tends to keep few images, the *unfiltered* control (every paste added as a
positive: "more positives" alone) is reported as well.

:class:`OracleTranslator` paints the phantom's own lytic lesion model (darker disc, bright rim)
into the patch centre: the ceiling a perfect translator could give, so the experiment runs end to
end before a UNIT model is trained.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medloop.plugins.lesions.checks import LesionInputError
from medloop.plugins.lesions.classifier import ClassifierConfig
from medloop.plugins.lesions.phantoms import LesionSpec, phantom_set, with_spec
from medloop.plugins.lesions.synthesize import SynthesisParams
from medloop.plugins.lesions.translators import IdentityTranslator, Translator

#: (lesion, normal) counts per split (spec §1 CPU scale).
SIZES: dict[str, tuple[int, int]] = {"train": (30, 300), "val": (15, 150), "test": (50, 500)}
THRESHOLDS = (0.5, 0.7, 0.9)
#: The experiment's classifier. On 30 positives its learning is all-or-nothing and depends on the
#: training length (measured on seeds 0-2 with the lesions below): 6-20 epochs of 25 steps stay at
#: chance (test AUC 0.46-0.61), 40 epochs reach 0.94-0.99 (nothing left to gain), 25 epochs are
#: data-limited (0.94 / 0.61 / 0.80), the regime of the paper's baselines (0.53-0.88).
EXPERIMENT_CONFIG = ClassifierConfig(width=8, epochs=25, steps_per_epoch=25, batch=16, lr=2e-3)
#: Lytic lesions from barely visible to clear (amplitude 0.03-0.20): with the phantom's default
#: look (0.25-0.4, radius 3-8) a small CNN on 30 positives reaches test AUC 1.0, leaving nothing
#: to augment; with graded contrast the faint ones limit the baseline, as real subtle lesions do.
EXPERIMENT_LESIONS = with_spec("bone", amplitude=(0.03, 0.20), rim=0.04, radius=(2.0, 5.0))


@dataclass
class Split:
    """Images (N, H, W) float32 in [0, 1], labels (N,) bool, the lesion boxes and bone masks."""

    images: np.ndarray
    labels: np.ndarray
    boxes: list[list[tuple[int, int, int, int]]]
    anatomy: np.ndarray


@dataclass
class BoneData:
    train: Split
    val: Split
    test: Split


def _split(seed: int, lesion: int, normal: int, spec: LesionSpec) -> Split:
    total = lesion + normal
    phantoms = phantom_set("bone", total, seed, lesion / total, lesions=spec)
    return Split(np.stack([p.image for p in phantoms]), np.array([p.has_lesion for p in phantoms]),
                 [list(p.boxes) for p in phantoms], np.stack([p.anatomy for p in phantoms]))


def bone_data(seed: int = 0, sizes: dict[str, tuple[int, int]] | None = None, lesions: LesionSpec = EXPERIMENT_LESIONS) -> BoneData:
    """Train / validation / test bone-phantom sets with disjoint seeds drawn from ``seed``; labels
    are whether a lesion was placed (the phantom may fail to fit one; then the image is normal)."""
    sizes = {**SIZES, **(sizes or {})}
    seeds = np.random.SeedSequence([seed, 17]).generate_state(3, dtype=np.uint32)
    return BoneData(*(_split(int(s), *sizes[k], lesions) for s, k in zip(seeds, ("train", "val", "test"))))


class OracleTranslator:
    """Paints the phantom's lytic lesion of ``spec`` (darker disc, bright rim, soft edge; default
    the experiment's) at the patch centre. A crop of scale ``s`` around a box of side 2r holds a
    lesion of radius about size / (2 s) patch pixels; the radius is drawn in [0.8, 1] of that."""

    name = "oracle"
    placement = "centred"  # it paints at the patch centre: crops are centred on their boxes

    def __init__(self, size: int = 32, s: int = 2, spec: LesionSpec = EXPERIMENT_LESIONS) -> None:
        self.size, self.s = int(size), int(s)
        self.amplitude, self.rim = spec.amplitude, spec.rim
        self.typical_radius = float(np.mean(spec.radius)) + 0.5  # image px (the box is 2r + 1 wide)

    def translate(self, patches: np.ndarray, seed: int = 0) -> np.ndarray:
        arr = np.asarray(patches, np.float32)
        rng = np.random.default_rng(seed)
        n, h, w = arr.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        scale = h / (2 * self.s * self.typical_radius)  # patch px per image px
        out = np.empty_like(arr)
        for i in range(n):
            radius = rng.uniform(0.8, 1.0) * h / (2 * self.s)
            cy, cx = (h - 1) / 2 + rng.uniform(-1, 1), (w - 1) / 2 + rng.uniform(-1, 1)
            d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
            soft = scale / 4.0  # the phantom's edge softness, 1 image px
            profile = 1.0 / (1.0 + np.exp((d - radius) / soft))
            ring = np.exp(-(((d - radius - 0.8 * scale) / (0.9 * scale)) ** 2))
            change = -rng.uniform(*self.amplitude) * profile + self.rim * ring
            out[i] = np.clip(arr[i] + change, 0.0, 1.0)
        return out


#: The experiment's translator: the packaged recipe's UNIT (image skip, centred crops, s = 2).
EXPERIMENT_UNIT = {"size": 32, "batch": 8, "steps": 4000, "steps_per_epoch": 100, "lr": 2e-4, "private_blocks": 1,
                   "image_skip": True}


def train_experiment_translator(data: BoneData, seed: int, settings: dict[str, Any] | None = None,
                                progress: Callable[..., None] | None = None) -> Translator:
    """A UNIT trained on this split's own training images only (its 30 lesion images and their 5
    most similar healthy ones, as Gupta et al. trained theirs on the training set): no lesion
    the baseline has not seen reaches the augmented classifier."""
    from types import SimpleNamespace

    from medloop.plugins.lesions.patches import translator_patches
    from medloop.plugins.lesions.unit import UnitConfig, UnitTranslator, train_unit

    train = data.train
    phantoms = [SimpleNamespace(image=train.images[i], anatomy=train.anatomy[i], boxes=train.boxes[i])
                for i in range(len(train.images))]
    lesion = [p for p, y in zip(phantoms, train.labels) if y]
    healthy = [p for p, y in zip(phantoms, train.labels) if not y]
    config = UnitConfig(**{**EXPERIMENT_UNIT, **(settings or {}), "seed": seed})
    h, l_ = translator_patches(lesion, healthy, [2], 5, config.size, seed, placement="centred")
    translator = UnitTranslator(train_unit(h, l_, config, progress).model, config.size)
    translator.placement = "centred"
    return translator


def kept_counts(scores: np.ndarray, thresholds: Sequence[float]) -> dict[float, int]:
    """How many images score >= t, for each t (never increasing with t)."""
    scores = np.asarray(scores, np.float64)
    return {float(t): int(np.count_nonzero(scores >= t)) for t in thresholds}


def _train_auc(images: np.ndarray, labels: np.ndarray, data: BoneData, config: ClassifierConfig) -> tuple[Any, float, np.ndarray]:
    """Train on (images, labels) with validation; (model, validation AUC, test scores)."""
    from medloop.plugins.lesions.classifier import predict_proba, train_classifier

    result = train_classifier(images, labels, config, validation=(data.val.images, data.val.labels))
    return result.model, float(result.best_score), predict_proba(result.model, data.test.images)


def _synthetic(data: BoneData, translator: Translator, params: SynthesisParams, count: int, seed: int) -> Any:
    from medloop.plugins.lesions.augment import LesionAugmenter, box_sizes

    healthy = ~data.train.labels
    library = box_sizes([b for bs, y in zip(data.train.boxes, data.train.labels) if y for b in bs])
    augmenter = LesionAugmenter(list(data.train.images[healthy]), library, translator, params,
                                anatomy=list(data.train.anatomy[healthy]))
    return augmenter.make_positives(count, seed)


def _sweep(data: BoneData, synthetic: np.ndarray, scores: np.ndarray, thresholds: Sequence[float],
           config: ClassifierConfig, base: tuple[float, np.ndarray], tick: Callable[[], None]) -> dict[float, dict[str, Any]]:
    """Retrain with the synthetic images scoring >= t, for each t: kept count, val AUC, test scores.
    The same kept set gives the same model (same data, config and seed), so it is trained once;
    ``base`` holds the baseline's (val AUC, test scores), the model for an empty kept set."""
    out: dict[float, dict[str, Any]] = {}
    trained: dict[bytes, tuple[float, np.ndarray]] = {np.zeros(len(scores), bool).tobytes(): base}
    for t in thresholds:
        keep = scores >= t
        if keep.tobytes() not in trained:
            images = np.concatenate([data.train.images, synthetic[keep]])
            labels = np.concatenate([data.train.labels, np.ones(int(keep.sum()), bool)])
            trained[keep.tobytes()] = _train_auc(images, labels, data, config)[1:]
        val_auc, test_scores = trained[keep.tobytes()]
        out[float(t)] = {"kept": int(keep.sum()), "val_auc": val_auc, "test_scores": test_scores}
        tick()
    return out


def _compare(data: BoneData, base: np.ndarray, sweep: dict[float, dict[str, Any]], seed: int) -> dict[str, Any]:
    """The validation-chosen t (ties: the larger t) and its paired-bootstrap test ΔAUC vs the baseline."""
    from medloop.plugins.lesions.metrics import paired_bootstrap_auc, roc_auc

    chosen = max(sweep, key=lambda t: (round(sweep[t]["val_auc"], 10), t))
    paired = paired_bootstrap_auc(data.test.labels, base, sweep[chosen]["test_scores"], seed=seed)
    return {"t": chosen, "auc": paired.auc_b, "delta": paired.delta, "low": paired.low, "high": paired.high,
            "significant": paired.significant, "kept": sweep[chosen]["kept"],
            "per_t": {t: {"kept": v["kept"], "val_auc": round(v["val_auc"], 4),
                          "test_auc": round(roc_auc(data.test.labels, v["test_scores"]), 4)} for t, v in sweep.items()}}


@dataclass
class Augmented:
    """A classifier retrained with the synthetic positives its baseline scored >= ``t``."""

    model: Any
    t: float
    kept: dict[float, int]
    val_auc: dict[float, float]


def augment_classifier(
    data: BoneData, baseline: Any, translator: Translator, thresholds: Sequence[float], config: ClassifierConfig,
    synthetic_per_lesion: int = 10, params: SynthesisParams | None = None,
) -> Augmented:
    """Gupta et al.'s loop on ``data``: synthetic lesions in healthy training images, scored by
    ``baseline``, kept at each t, retrained; the t with the best validation AUC wins (ties: larger t;
    an empty kept set keeps the baseline)."""
    from medloop.plugins.lesions.classifier import ClassifierScorer, predict_proba, train_classifier
    from medloop.plugins.lesions.metrics import roc_auc

    params = params or SynthesisParams(s=2, seed=config.seed)
    synth = _synthetic(data, translator, params, synthetic_per_lesion * int(data.train.labels.sum()), config.seed)
    scores = ClassifierScorer(baseline, data.train.images.shape[1:]).score(synth.images)
    base_auc = roc_auc(data.val.labels, predict_proba(baseline, data.val.images))
    best, kept, val = (base_auc, -1.0, baseline), {}, {}
    for t in thresholds:
        keep = scores >= t
        kept[float(t)] = int(keep.sum())
        model, auc = baseline, base_auc
        if keep.any():
            images = np.concatenate([data.train.images, synth.images[keep]])
            labels = np.concatenate([data.train.labels, np.ones(int(keep.sum()), bool)])
            result = train_classifier(images, labels, config, validation=(data.val.images, data.val.labels))
            model, auc = result.model, float(result.best_score)
        val[float(t)] = round(auc, 4)
        if (round(auc, 10), t) > (round(best[0], 10), best[1]):
            best = (auc, float(t), model)
    return Augmented(best[2], best[1], kept, val)


def run_gupta_experiment(
    seed: int, translator: Translator, thresholds: Sequence[float] = THRESHOLDS, synthetic_per_lesion: int = 10,
    config: ClassifierConfig = EXPERIMENT_CONFIG, progress: Callable[[int, int], None] | None = None,
    params: SynthesisParams | None = None, data: BoneData | None = None,
) -> dict[str, Any]:
    """Baseline vs translator augmentation vs identity-paste control on bone phantoms (module
    docstring); returns AUCs, paired-bootstrap ΔAUCs with 95 % CIs, kept counts per t, the chosen t."""
    from dataclasses import replace

    from medloop.plugins.lesions.classifier import ClassifierScorer

    if not thresholds or any(not 0 <= t <= 1 for t in thresholds):
        raise LesionInputError(f"thresholds {tuple(thresholds)}; give values in [0, 1]")
    started = time.perf_counter()
    config = replace(config, seed=seed)
    params = params or SynthesisParams(s=2, seed=seed)
    total, done = 2 + 2 * len(thresholds), [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    data = data if data is not None else bone_data(seed)
    baseline, base_val, base_test = _train_auc(data.train.images, data.train.labels, data, config)
    tick()
    scorer = ClassifierScorer(baseline, data.train.images.shape[1:])
    count = synthetic_per_lesion * int(data.train.labels.sum())
    synth = _synthetic(data, translator, params, count, seed)
    control = _synthetic(data, IdentityTranslator(translator.size), params, count, seed)
    synth_scores, control_scores = scorer.score(synth.images), scorer.score(control.images)
    base = (base_val, base_test)
    augmented = _compare(data, base_test, _sweep(data, synth.images, synth_scores, thresholds, config, base, tick), seed)
    filtered = _compare(data, base_test, _sweep(data, control.images, control_scores, thresholds, config, base, tick), seed)
    unfiltered = _compare(data, base_test, _sweep(data, control.images, control_scores, (0.0,), config, base, tick), seed)
    from medloop.plugins.lesions.metrics import roc_auc

    return {
        "seed": seed, "translator": translator.name, "candidates": count,
        "baseline": {"val_auc": round(base_val, 4), "test_auc": roc_auc(data.test.labels, base_test)},
        "augmented": augmented, "control": filtered, "control_unfiltered": unfiltered,
        "kept": kept_counts(synth_scores, thresholds), "control_kept": kept_counts(control_scores, thresholds),
        "mean_score": {"synthetic": float(synth_scores.mean()), "identity": float(control_scores.mean())},
        "config": config.as_dict(), "seconds": round(time.perf_counter() - started, 1),
    }
