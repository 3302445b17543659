"""The CPU-scale Baur et al. experiment (spec §3 [proto]) and the anomaly recipe's trainer.

Data: brain phantoms at 64 x 64. The autoencoder sees lesion-free phantoms only; validation
(t calibration) and test images carry 1-3 hyper-intense white-matter lesions with exact masks.
Each set draws its own seeds, so no image is shared between sets.

Benchmark material (not CI gates): :func:`student_experiment` (a small U-Net trained on the
pseudo-labels S against its teacher) and :func:`domain_shift_experiment` (a second "scanner").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medloop.plugins.lesions.checks import LesionInputError, check_count
from medloop.plugins.lesions.phantoms import Phantom, phantom_set

ARCHITECTURE = "medloop.plugins.lesions.anomaly:SpatialAutoencoder"
WEIGHTS_FILE, TEST_DATA_FILE = "weights.pt", "test_data.npz"


@dataclass
class BrainSets:
    """Healthy training slices, labelled validation phantoms and labelled test phantoms."""

    healthy: list[np.ndarray]
    validation: list[Phantom]
    test: list[Phantom]


def _sub_seed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def brain_sets(seed: int = 0, n_healthy: int = 800, n_val: int = 60, n_test: int = 100,
               shape: tuple[int, int] = (64, 64)) -> BrainSets:
    """Seeded phantom sets for the experiment (lesion-free training images, lesioned val/test)."""
    for value, name in ((n_healthy, "healthy image count"), (n_val, "validation count"), (n_test, "test count")):
        check_count(value, name)
    shape = (int(shape[0]), int(shape[1]))
    healthy = [p.image for p in phantom_set("brain", n_healthy, _sub_seed(seed, 0), 0.0, shape=shape)]
    return BrainSets(healthy, phantom_set("brain", n_val, _sub_seed(seed, 1), 1.0, shape=shape),
                     phantom_set("brain", n_test, _sub_seed(seed, 2), 1.0, shape=shape))


def maps_of(model: Any, phantoms: Sequence[Phantom], median: int = 5) -> list[np.ndarray]:
    """The residual map of every phantom inside its brain mask."""
    from medloop.plugins.lesions.residual import anomaly_map

    return [anomaly_map(model, p.image, p.anatomy, median, f"phantom {p.seed}") for p in phantoms]


def healthy_mae(model: Any, images: Sequence[np.ndarray], masks: Sequence[np.ndarray] | None = None) -> float:
    """Mean |x - x_hat| of healthy images: over every pixel, or over the masks' pixels if given."""
    from medloop.plugins.lesions.anomaly import reconstruct

    errors = []
    for i, image in enumerate(images):
        err = np.abs(reconstruct(model, image) - np.asarray(image, np.float32))
        errors.append(err if masks is None else err[np.asarray(masks[i], bool)])
    return float(np.mean(np.concatenate([e.ravel() for e in errors])))


def evaluate_anomaly(model: Any, sets: BrainSets, median: int = 5) -> dict[str, float]:
    """Calibrate t on the validation set, then pooled UAD Dice / AUPRC on the test set, and the
    healthy reconstruction MAE (whole image, and inside the brain) on healthy twins of the test set."""
    from medloop.plugins.lesions.residual import calibrate_threshold, uad_scores

    val = maps_of(model, sets.validation, median)
    t, val_dice = calibrate_threshold(val, [p.lesion for p in sets.validation], masks=[p.anatomy for p in sets.validation])
    test = maps_of(model, sets.test, median)
    scores = uad_scores(test, [p.lesion for p in sets.test], t, [p.anatomy for p in sets.test])
    twins = [p.healthy for p in sets.test]
    return {"uad_dice": round(scores["dice"], 4), "uad_auprc": round(scores["auprc"], 4), "threshold": round(t, 5),
            "validation_dice": round(val_dice, 4), "healthy_mae": round(healthy_mae(model, twins), 5),
            "healthy_mae_brain": round(healthy_mae(model, twins, [p.anatomy for p in sets.test]), 5)}


def train_anomaly_recipe(raw: dict[str, Any], out: Path, progress: Callable[..., None] | None = None,
                         should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train the recipe's autoencoder, calibrate t, measure on the test set and write
    ``weights.pt`` (keys ``autoencoder.*``) and ``test_data.npz`` into ``out``; returns what the
    model card records."""
    from medloop.app.io.atomic import atomic_torch_save
    from medloop.plugins.lesions.anomaly import AnomalyConfig, reconstruct, train_autoencoder

    data = raw.get("data", {})
    config = AnomalyConfig.from_dict(raw.get("train", {}))
    sets = brain_sets(int(data.get("seed", 0)), int(data.get("healthy", 800)), int(data.get("validation", 60)),
                      int(data.get("test", 100)), tuple(data.get("shape", (64, 64))))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = train_autoencoder(sets.healthy, config, progress, should_stop, str(out / "checkpoint.pt"))
    if result.stopped:
        from medloop.app.engine.jobs import JobCancelled

        raise JobCancelled("anomaly training was stopped; the checkpoint is kept, run again to resume")
    model = result.model
    metrics = evaluate_anomaly(model, sets)
    # Pseudo-label Dice: S on the test set against the truth (the paper's S is on unlabelled scans).
    metrics["pseudo_label_dice"] = metrics["uad_dice"]
    weights = atomic_torch_save({f"autoencoder.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                                out / WEIGHTS_FILE)
    sample = sets.test[0].image
    test_data = out / TEST_DATA_FILE
    np.savez_compressed(test_data, input=sample.astype(np.float32), output=reconstruct(model, sample).astype(np.float32))
    return {"config": config.as_dict(), "steps": result.steps_done, "files": {"weights": Path(weights), "test_data": test_data},
            "metrics": metrics, "threshold": metrics["threshold"],
            "architecture": {"name": ARCHITECTURE, "kwargs": {"width": config.width, "channels": list(config.channels)}}}
