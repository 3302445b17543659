"""The student of Baur et al. (A_S): a 2-D U-Net that segments lesions, trained only on the anomaly
autoencoder's pseudo-labels S of unlabelled phantoms — no human label anywhere.

It is packaged as a *segmentation* model (``resources/models/lesion-student-brain``), so the
Segmentation, Correction and Review panels offer it: the loop of issue #17 is *anomaly map →
pseudo-labels → Send to Correction → correct → fine-tune this model*, and ``medloop train --weak
strokes --model lesion-student-brain`` does the same headless. Its card records the student's and
the teacher's Dice on labelled test phantoms (the paper: the student beat its teacher by 0.045).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medloop.plugins.lesions.checks import LesionInputError

ARCHITECTURE = "unet2d"
DATA_DEFAULTS: dict[str, Any] = {"seed": 0, "teacher": "lesion-anomaly-brain", "unlabelled": 400, "lesion_fraction": 0.7,
                                 "test": 100, "shape": [64, 64]}
TRAIN_DEFAULTS: dict[str, Any] = {"features": [8, 16, 32, 64], "epochs": 12, "steps_per_epoch": 50, "batch_size": 16,
                                  "lr": 2e-3, "loss": "dice_ce", "seed": 0}


def _settings(raw: dict[str, Any], key: str, defaults: dict[str, Any]) -> dict[str, Any]:
    from medloop.models.plugin_recipes import recipe_section

    return recipe_section(raw, key, defaults, LesionInputError, "student recipe")


def pseudo_labelled(teacher: Any, phantoms: list[Any]) -> list[np.ndarray]:
    """S = r >= t of each phantom under the teacher (its calibrated t, brain = the anatomy mask)."""
    return [(teacher.anomaly_map(p.image, p.anatomy) >= teacher.threshold).astype(np.int64) for p in phantoms]


def predict(network: Any, images: list[np.ndarray]) -> list[np.ndarray]:
    """The network's argmax labels of 2-D images (whole image at once: they are small)."""
    import torch

    network.eval()
    with torch.inference_mode():
        x = torch.from_numpy(np.stack(images)[:, None].astype(np.float32))
        return list(network(x).argmax(dim=1).numpy().astype(np.uint8))


def train_student_recipe(raw: dict[str, Any], out: Path, progress: Callable[..., None] | None = None,
                         should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train the recipe's student on the teacher's pseudo-labels; returns what the card records."""
    import torch

    from medloop.app.engine.train import TrainConfig, train_segmentation
    from medloop.app.io.atomic import atomic_torch_save
    from medloop.models.nets import build_network
    from medloop.plugins.lesions.metrics import dice
    from medloop.plugins.lesions.phantoms import phantom_set
    from medloop.plugins.lesions.zoo import load_lesion_model

    data, train = _settings(raw, "data", DATA_DEFAULTS), _settings(raw, "train", TRAIN_DEFAULTS)
    teacher = load_lesion_model(data["teacher"], "anomaly")
    shape = tuple(int(v) for v in data["shape"])
    seeds = np.random.SeedSequence([int(data["seed"]), 31]).generate_state(2, dtype=np.uint32)
    unlabelled = phantom_set("brain", int(data["unlabelled"]), int(seeds[0]), float(data["lesion_fraction"]), shape=shape)
    test = phantom_set("brain", int(data["test"]), int(seeds[1]), 1.0, shape=shape)
    labels = pseudo_labelled(teacher, unlabelled)
    torch.manual_seed(int(train["seed"]))
    kwargs = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "features": list(train["features"]), "norm": "group"}
    network = build_network(ARCHITECTURE, **kwargs)
    config = TrainConfig(epochs=int(train["epochs"]), steps_per_epoch=int(train["steps_per_epoch"]),
                         batch_size=int(train["batch_size"]), patch_size=shape, lr=float(train["lr"]), loss=train["loss"],
                         seed=int(train["seed"]), num_classes=2, device="cpu")
    pairs = [(p.image[None].astype(np.float32), y) for p, y in zip(unlabelled, labels)]
    result = train_segmentation(network, pairs, None, config, progress=progress, should_stop=should_stop,
                                checkpoint_path=Path(out) / "checkpoint.pt")
    if getattr(result, "stopped", False):
        from medloop.app.engine.jobs import JobCancelled

        raise JobCancelled("student training stopped; no model written")
    truth = np.concatenate([p.lesion.ravel() for p in test])
    student = np.concatenate([m.ravel() for m in predict(network, [p.image for p in test])]) > 0
    teacher_labels = np.concatenate([m.ravel() for m in pseudo_labelled(teacher, test)]) > 0
    metrics = {"student_dice": round(dice(student, truth), 4), "teacher_dice": round(dice(teacher_labels, truth), 4),
               "pseudo_label_dice_train": round(dice(np.concatenate([y.ravel() for y in labels]) > 0,
                                                     np.concatenate([p.lesion.ravel() for p in unlabelled])), 4)}
    out = Path(out)
    weights = atomic_torch_save({k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}, out / "weights.pt")
    sample = test[0].image[None].astype(np.float32)
    with torch.inference_mode():
        probs = torch.softmax(network(torch.from_numpy(sample[None])), dim=1)[0].numpy()
    test_data = out / "test_data.npz"
    np.savez_compressed(test_data, input=sample, output=probs.astype(np.float32))
    return {"config": {**data, **train}, "steps": int(train["epochs"]) * int(train["steps_per_epoch"]),
            "files": {"weights": Path(weights), "test_data": test_data}, "metrics": metrics,
            "architecture": {"name": ARCHITECTURE, "kwargs": kwargs}, "input_shape": list(shape)}
