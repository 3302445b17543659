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

from medloop.plugins.lesions.checks import check_count
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
            "metrics": metrics, "threshold": metrics["threshold"], "input_shape": list(sample.shape),
            "architecture": {"name": ARCHITECTURE, "kwargs": {"width": config.width, "channels": list(config.channels)}}}


def _train_unet(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], steps: int, seed: int) -> Any:
    """A width-8 2-D U-Net trained on (image, label) pairs with BCE + soft Dice through the shared loop."""
    import torch

    from medloop.app.engine.loop import LoopConfig, TrainStep, train
    from medloop.models.nets.unet import unet2d

    x = torch.from_numpy(np.stack(images).astype(np.float32))[:, None]
    y = torch.from_numpy(np.stack(labels).astype(np.float32))[:, None]
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = unet2d(in_channels=1, out_channels=1, features=(8, 16, 32))
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)

    class Step(TrainStep):
        def __call__(self, batch: Any, at: Any) -> dict[str, float]:
            xb, yb = batch
            logits = net(xb)
            p = torch.sigmoid(logits)
            soft_dice = 1 - (2 * (p * yb).sum() + 1) / (p.sum() + yb.sum() + 1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yb) + soft_dice
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            return {"loss": float(loss.detach())}

    def sample() -> Any:
        idx = torch.from_numpy(rng.integers(len(x), size=16))
        return x[idx], y[idx]

    train(net, sample, Step(), LoopConfig(epochs=1, steps_per_epoch=steps, seed=seed))
    return net.eval()


def _probabilities(net: Any, phantoms: Sequence[Phantom], shift: Callable[[Phantom], np.ndarray] | None = None) -> list[np.ndarray]:
    import torch

    x = np.stack([p.image if shift is None else shift(p) for p in phantoms]).astype(np.float32)
    with torch.inference_mode():
        return list(torch.sigmoid(net(torch.from_numpy(x)[:, None]))[:, 0].numpy())


def _segmentation_dice(net: Any, val: Sequence[Phantom], test: Sequence[Phantom],
                       shift: Callable[[Phantom], np.ndarray] | None = None) -> float:
    """Pooled test Dice at the operating point chosen on the validation set (as the paper does)."""
    from medloop.plugins.lesions.residual import calibrate_threshold, uad_scores

    t, _ = calibrate_threshold(_probabilities(net, val, shift), [p.lesion for p in val], masks=[p.anatomy for p in val])
    return uad_scores(_probabilities(net, test, shift), [p.lesion for p in test], t, [p.anatomy for p in test])["dice"]


def student_experiment(model: Any, t: float, sets: BrainSets, n_unlabelled: int = 200, steps: int = 300,
                       seed: int = 0) -> dict[str, float]:
    """A_S: a U-Net trained only on pseudo-labels S of unlabelled lesioned phantoms, against its
    teacher (the thresholded anomaly map), both as pooled Dice on the test set."""
    from medloop.plugins.lesions.residual import threshold_map, uad_scores

    unlabelled = phantom_set("brain", n_unlabelled, _sub_seed(seed, 3), 1.0)
    pseudo = [threshold_map(r, t) for r in maps_of(model, unlabelled)]
    truth = np.concatenate([p.lesion.ravel() for p in unlabelled])
    pseudo_dice = float(2 * (np.concatenate([s.ravel() for s in pseudo]).astype(bool) & truth).sum()
                        / (sum(int(s.sum()) for s in pseudo) + truth.sum()))
    teacher = uad_scores(maps_of(model, sets.test), [p.lesion for p in sets.test], t, [p.anatomy for p in sets.test])["dice"]
    net = _train_unet([p.image for p in unlabelled], pseudo, steps, seed)
    return {"pseudo_label_dice": round(pseudo_dice, 4), "teacher_dice": round(teacher, 4),
            "student_dice": round(_segmentation_dice(net, sets.validation, sets.test), 4)}


def scanner_b(phantom: Phantom, gamma: float = 0.7, contrast: float = 1.15) -> np.ndarray:
    """The second "scanner": a gamma and contrast change and a different (left-right) bias field."""
    h, w = phantom.image.shape
    bias = 1.0 + 0.15 * np.linspace(-1.0, 1.0, w)[None, :].repeat(h, 0)
    out = np.where(phantom.anatomy, contrast * np.power(np.clip(phantom.image, 0, 1), gamma) * bias, 0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def target_autoencoder(config: Any, sets: BrainSets, n_healthy: int = 800, seed: int = 0) -> tuple[Any, float]:
    """An autoencoder trained on healthy slices of the target scanner (Baur et al.'s set-up: the AE
    knows the unlabelled domain's healthy anatomy) and its t calibrated on target validation."""
    from medloop.plugins.lesions.anomaly import train_autoencoder
    from medloop.plugins.lesions.residual import anomaly_map, calibrate_threshold

    healthy = [scanner_b(p) for p in phantom_set("brain", n_healthy, _sub_seed(seed, 6), 0.0)]
    model = train_autoencoder(healthy, config).model
    maps = [anomaly_map(model, scanner_b(p), p.anatomy) for p in sets.validation]
    t, _ = calibrate_threshold(maps, [p.lesion for p in sets.validation], masks=[p.anatomy for p in sets.validation])
    return model, t


def domain_shift_experiment(model: Any, t: float, sets: BrainSets, n_labelled: int = 12, n_target: int = 200,
                            steps: int = 300, seed: int = 0) -> dict[str, float]:
    """B_YL (12 labelled source images) against B_YL+S (plus target-scanner images with the
    pseudo-labels of ``model``, an autoencoder of the target scanner's healthy anatomy, at ``t``);
    Dice on the target scanner's test set (operating point chosen on target validation)."""
    from medloop.plugins.lesions.residual import anomaly_map, threshold_map

    source = phantom_set("brain", n_labelled, _sub_seed(seed, 4), 1.0)
    target = phantom_set("brain", n_target, _sub_seed(seed, 5), 1.0)
    pseudo = [threshold_map(anomaly_map(model, scanner_b(p), p.anatomy), t) for p in target]
    x_l, y_l = [p.image for p in source], [p.lesion for p in source]
    base = _train_unet(x_l, y_l, steps, seed)
    both = _train_unet(x_l + [scanner_b(p) for p in target], y_l + pseudo, steps, seed)
    return {"b_yl_target_dice": round(_segmentation_dice(base, sets.validation, sets.test, scanner_b), 4),
            "b_yl_s_target_dice": round(_segmentation_dice(both, sets.validation, sets.test, scanner_b), 4),
            "target_pseudo_label_dice": round(_pooled_dice(pseudo, [p.lesion for p in target]), 4)}


def _pooled_dice(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> float:
    from medloop.plugins.lesions.metrics import dice

    return dice(np.concatenate([np.ravel(p) > 0 for p in predictions]), np.concatenate([np.ravel(t) for t in truths]))
