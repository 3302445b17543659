"""Training the two models of a segment-then-segment cascade (seed 002) from images and their
label maps, and writing each as weights + card: what ``medloop train --cascade-coarse |
--cascade-fine`` and the Segmentation panel's "Train cascade" share.

Qt-free; long steps take ``progress(done, total, info)`` and ``should_stop()`` callbacks.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medloop.app.errors import MedloopError
from medloop.app.io.image import MedImage


class CascadeTrainingError(MedloopError, ValueError):
    """Training data or settings a cascade cannot be trained from."""


def check_input_size(base_name: str, network: Any, size: Sequence[int]) -> None:
    """``size`` must be positive and a multiple of what ``network`` divides its input by."""
    divisor = int(getattr(network, "divisible_by", 1))
    if min(size) < 1 or any(n % divisor for n in size):
        raise CascadeTrainingError(
            f"input size {' x '.join(map(str, size))} does not suit model {base_name}: give a positive multiple of {divisor}"
        )


def training_arrays(
    pairs: Sequence[tuple[MedImage, MedImage, str, str]], card
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images normalised for ``card`` ``(C, *spatial)`` and their masks ``(*spatial)`` int64, from
    ``(image, mask, image name, mask name)``; the names go into the error messages."""
    from medloop.app.io.validate import check_same_grid
    from medloop.plugins.segmentation.method import check_input, network_input

    images, masks = [], []
    for image, mask, image_name, mask_name in pairs:
        if image.ndim != card.spatial_dims:
            raise CascadeTrainingError(
                f"{image_name} is a {image.ndim}-D image but model {card.name} segments {card.spatial_dims}-D images; "
                f"start from a {image.ndim}-D model"
            )
        check_input(image, card)
        check_same_grid(image, mask)
        labels = np.asarray(mask.array).astype(np.int64)
        low, top = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
        if top >= len(card.classes) or low < 0:
            raise CascadeTrainingError(
                f"{mask_name} has label {top if top >= len(card.classes) else low} but model "
                f"{card.name} has classes 0..{len(card.classes) - 1}; give masks with those labels"
            )
        images.append(network_input(image, card))
        masks.append(labels)
    if masks and not any((m > 0).any() for m in masks):
        names = ", ".join(name for _, _, _, name in pairs)
        raise CascadeTrainingError(f"{names}: no labelled object to learn from; label the objects to find first")
    return images, masks


def training_config(epochs: int | None) -> Any:
    """20 epochs x 20 steps of 8 patches, flips, Adam 1e-3, Dice + cross-entropy."""
    from medloop.app.engine.augment import AugmentConfig
    from medloop.app.engine.train import TrainConfig
    from medloop.app.engine.losses import loss_by_name

    aug = AugmentConfig.none()
    aug.p_flip = 0.5
    # Dice + cross-entropy, as the paper trains with Dice: a few small objects per image otherwise
    # teach "all background" first.
    return TrainConfig(epochs=epochs or 20, steps_per_epoch=20, batch_size=8, lr=1e-3, augment=aug,
                       foreground_fraction=0.0, loss=loss_by_name("dice_ce"))


def write_model(model, base_card: dict, out: Path, name: str, description: str, size, training: dict) -> None:
    """Weights (atomic) and a card derived from ``base_card`` that runs at input size ``size``."""
    from medloop.app.io.atomic import atomic_torch_save
    from medloop.models.card import write_card
    from medloop.models.registry import sha256_of

    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(model.state_dict(), out / "weights.pt")
    card = dict(base_card)
    card.update(name=name, description=description, training=training)
    card["weights"] = {**card["weights"], "source": "weights.pt", "sha256": sha256_of(out / "weights.pt")}
    card["inference"] = {**card.get("inference", {}), "input_size": [int(v) for v in size]}
    card.pop("test_data", None)
    write_card(card, out / "card.json")


def coarse_description(base_name: str, size, target: str) -> str:
    return (f"Coarse model of a segment-then-segment cascade: finds objects on the whole image resized to "
            f"{' x '.join(map(str, size))} (trained on '{target}' masks from {base_name}'s weights).")


def fine_description(coarse_name: str, size) -> str:
    return (f"Fine model of a segment-then-segment cascade with {coarse_name}: segments crops around objects, "
            f"resized to {' x '.join(map(str, size))}.")


def free_name(stem: str, models_dir: Path | None) -> str:
    """``stem``, or ``stem-2``, ``stem-3`` ... : the first name no installed model has."""
    from medloop.models.registry import list_models

    taken = {m.name for m in list_models(models_dir)}
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    return name


@dataclass(frozen=True)
class CascadeTrainParams:
    """What :func:`train_cascade` trains: both models at input size S ``input_size`` for
    ``epochs`` (None: :func:`training_config`'s 20) from ``seed``, the coarse one on ``target``
    masks (see :func:`~medloop.plugins.segmentation.cascade.resize_mask`)."""

    input_size: int
    epochs: int | None = None
    seed: int = 0
    target: str = "any"


def train_cascade(
    base_name: str,
    pairs: Sequence[tuple[MedImage, MedImage, str, str]],
    params: CascadeTrainParams,
    models_dir: Path | None = None,
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[str, str]:
    """Train both models of a cascade and register them in ``models_dir`` (None: the user's
    folder): the coarse model from ``base_name``'s weights on whole images resized to
    ``params.input_size``, then the fine model from the coarse weights on jittered ground-truth
    crops. Returns the two new model names (``<base>-coarse-S``, ``<base>-fine-S``, numbered
    when taken).

    ``progress(done, total, info)`` counts the steps of both; ``should_stop()`` cancels
    (``JobCancelled``) and registers nothing. Data are checked before any training."""
    from medloop.models.registry import build_model, get_model, register_model
    from medloop.plugins.segmentation.cascade import StageTrainParams, train_coarse_model, train_fine_model

    input_size, seed, target = params.input_size, params.seed, params.target
    base = get_model(base_name, models_dir)
    size = (int(input_size),) * base.card.spatial_dims
    network = build_model(base)
    check_input_size(base.name, network, size)
    images, masks = training_arrays(pairs, base.card)
    config = training_config(params.epochs)
    total = 2 * config.epochs * config.steps_per_epoch

    def phase(offset: int):
        def report(done: int, _total: int, info: dict | None = None) -> None:
            if progress is not None:
                progress(offset + done, total, {**(info or {}), "phase": "fine" if offset else "coarse"})
        return report

    stage = StageTrainParams(size, config, seed=seed, target=target)
    coarse = train_coarse_model(network, images, masks, stage, progress=phase(0), should_stop=should_stop)
    fine = train_fine_model(coarse.model, images, masks, stage,
                            progress=phase(config.epochs * config.steps_per_epoch), should_stop=should_stop)
    coarse_name = free_name(f"{base.name}-coarse-{input_size}", models_dir)
    fine_name = free_name(f"{base.name}-fine-{input_size}", models_dir)
    common = {"images": len(images), "seed": int(seed)}
    with tempfile.TemporaryDirectory() as tmp:
        for model, name, description, training in (
            (coarse.model, coarse_name, coarse_description(base.name, size, target),
             {"cascade_coarse_of": base.name, "target": target, **common, "epochs": coarse.epochs_done}),
            (fine.model, fine_name, fine_description(coarse_name, size),
             {"cascade_fine_of": coarse_name, **common, "epochs": fine.epochs_done}),
        ):
            folder = Path(tmp) / name
            write_model(model, base.card.raw, folder, name, description, size, training)
            register_model(folder / "weights.pt", folder / "card.json", models_dir)
    return coarse_name, fine_name
