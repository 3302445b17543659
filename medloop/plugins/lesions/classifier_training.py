"""The classifier recipe (``kind: classifier``): the filter of Gupta et al. trained on the bone
phantoms of :func:`~medloop.plugins.lesions.gupta_experiment.bone_data`, and with ``augment``
(``medloop train --augment-lesions``) retrained with the translator's synthetic positives kept at t.
Apart from :mod:`.classifier` so that the network module imports neither the experiment nor the zoo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medloop.plugins.lesions.checks import LesionInputError
from medloop.plugins.lesions.classifier import (
    ARCHITECTURE, WEIGHTS_PREFIX, ClassifierConfig, LesionClassifier, predict_proba, train_classifier,
)


def train_classifier_recipe(raw: dict[str, Any], out: Path, progress: Any = None, should_stop: Any = None) -> dict[str, Any]:
    """The recipe trainer: ``raw["train"]`` holds :class:`ClassifierConfig` fields, ``raw["data"]``
    the bone-phantom seed; trains on the Gupta CPU-scale data with validation, writes
    ``weights.pt`` (keys ``classifier.*``) and ``test_data.npz`` into ``out``."""
    from medloop.app.engine.jobs import JobCancelled
    from medloop.app.io.atomic import atomic_torch_save
    from medloop.plugins.lesions.gupta_experiment import bone_data
    from medloop.plugins.lesions.metrics import roc_auc

    settings = dict(raw.get("train", {}))
    unknown = sorted(set(settings) - set(ClassifierConfig.__dataclass_fields__))
    if unknown:
        raise LesionInputError(f"recipe train settings {', '.join(unknown)} are unknown; use {', '.join(ClassifierConfig.__dataclass_fields__)}")
    config = ClassifierConfig(**settings)
    data = bone_data(int(raw.get("data", {}).get("seed", 0)))
    result = train_classifier(data.train.images, data.train.labels, config, progress, should_stop,
                              (data.val.images, data.val.labels))
    if result.stopped:
        raise JobCancelled(f"training stopped after {result.steps_done} steps; no model written")
    model = result.model
    baseline_auc = roc_auc(data.test.labels, predict_proba(model, data.test.images))
    extra: dict[str, Any] = {}
    if raw.get("augment", {}).get("translator"):
        model, extra = _augmented(raw["augment"], data, model, config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = atomic_torch_save({WEIGHTS_PREFIX + k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                                out / "weights.pt")
    sample = data.test.images[:4]
    test_data = out / "test_data.npz"
    with torch.inference_mode():
        logits = model(torch.from_numpy(sample[:, None].astype(np.float32))).numpy()
    np.savez_compressed(test_data, input=sample[:, None].astype(np.float32), output=logits.astype(np.float32))
    auc = roc_auc(data.test.labels, predict_proba(model, data.test.images))
    metrics = {"auc_test": round(auc, 4), "auc_val": round(result.best_score, 4), "best_epoch": result.best_epoch,
               "auc_test_baseline": round(baseline_auc, 4), **extra}
    return {"config": config.as_dict(), "steps": result.steps_done, "files": {"weights": Path(weights), "test_data": test_data},
            "metrics": metrics, "architecture": {"name": ARCHITECTURE, "kwargs": {"width": config.width}},
            "input_shape": list(data.train.images.shape[1:])}


def _augmented(augment: dict[str, Any], data: Any, baseline: LesionClassifier, config: ClassifierConfig) -> tuple[Any, dict[str, Any]]:
    """``--augment-lesions``: the baseline retrained with the translator's synthetic positives
    kept at t (given, or chosen on validation AUC among 0.5 / 0.7 / 0.9)."""
    from medloop.plugins.lesions.gupta_experiment import THRESHOLDS, augment_classifier
    from medloop.plugins.lesions.zoo import load_lesion_model

    translator = load_lesion_model(augment["translator"], "translator").translator()
    t = augment.get("threshold")
    thresholds = THRESHOLDS if t is None else (float(t),)
    done = augment_classifier(data, baseline, translator, thresholds, config,
                              int(augment.get("synthetic_per_lesion", 10)))
    # augment_t None: no t beat the baseline on validation AUC, which is kept (the paper's inverted U)
    return done.model, {"augment_translator": translator.name, "augment_t": done.t if done.t >= 0 else None,
                        "augment_kept": done.kept.get(done.t, 0) if done.t >= 0 else 0,
                        "augment_kept_per_t": {str(k): v for k, v in done.kept.items()}}
