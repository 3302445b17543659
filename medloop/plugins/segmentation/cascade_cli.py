"""`medloop train --cascade-coarse | --cascade-fine`: train the two models of a segment-then-segment
cascade (seed 002) from images and their label maps, and write each as weights + card.

Wired into ``medloop/app/cli.py``; errors are ``MedloopError`` subclasses (one line, exit code 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from medloop.app.errors import MedloopError


def train_cascade_model(args: argparse.Namespace, read) -> int:
    """Train the coarse (``args.cascade_coarse``) or fine model of a cascade from ``args.model``'s
    weights; ``read(path)`` reads an image. Prints the folder written."""
    from medloop.models.registry import build_model, get_model
    from medloop.plugins.segmentation.cascade import train_coarse_model, train_fine_model
    from medloop.plugins.segmentation.method import input_size_of

    flag = "--cascade-coarse" if args.cascade_coarse else "--cascade-fine"
    start = "BASE" if args.cascade_coarse else "COARSE"
    if not args.model or not args.images or len(args.images) != len(args.masks):
        raise MedloopError(f"train {flag} needs --model {start} and --images and --masks, one mask per image")
    base = get_model(args.model, args.models_dir)
    size = (int(args.input_size),) * base.card.spatial_dims if args.input_size else input_size_of(base.card)
    if size is None:
        if args.cascade_coarse:
            raise MedloopError(f"train --cascade-coarse needs --input-size S (model {base.name} has no inference.input_size)")
        raise MedloopError(f"model {base.name} has no inference.input_size in its card; the coarse model of a cascade must run on whole images resized to S x S")
    network = build_model(base)
    divisor = int(getattr(network, "divisible_by", 1))
    if min(size) < 1 or any(n % divisor for n in size):
        raise MedloopError(f"input size {' x '.join(map(str, size))} does not suit model {base.name}: give a positive multiple of {divisor}")
    images, masks = _training_data(args, read, base.card)
    config = _config(args.epochs)

    def show(done: int, total: int, info: dict | None = None) -> None:
        if (info or {}).get("event") == "epoch":
            print(f"train: epoch {info['epoch']} loss {info['train_loss']:.4g}", file=sys.stderr, flush=True)

    if args.cascade_coarse:
        result = train_coarse_model(network, images, masks, size, config, target=args.coarse_target, seed=args.seed, progress=show)
        name = args.name or f"{base.name}-coarse"
        description = (f"Coarse model of a segment-then-segment cascade: finds objects on the whole image resized to "
                       f"{' x '.join(map(str, size))} (trained on '{args.coarse_target}' masks from {base.name}'s weights).")
        training = {"cascade_coarse_of": base.name, "target": args.coarse_target}
    else:
        result = train_fine_model(network, images, masks, size, config, seed=args.seed, progress=show)
        name = args.name or f"{base.name}-fine"
        description = (f"Fine model of a segment-then-segment cascade with {base.name}: segments crops around objects, "
                       f"resized to {' x '.join(map(str, size))}.")
        training = {"cascade_fine_of": base.name}
    training.update(images=len(images), epochs=result.epochs_done, seed=int(args.seed))
    out = Path(args.out)
    _write_model(result.model, base.card.raw, out, name, description, size, training)
    print(f"wrote {out} (register it with: medloop models register {out / 'weights.pt'} --card {out / 'card.json'})")
    return 0


def _training_data(args: argparse.Namespace, read, card) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images normalised for ``card`` ``(C, *spatial)`` and their masks ``(*spatial)`` int64."""
    from medloop.app.io.validate import check_same_grid
    from medloop.plugins.segmentation.method import check_input, network_input

    images, masks = [], []
    for image_path, mask_path in zip(args.images, args.masks):
        image, mask = read(image_path), read(mask_path)
        if image.ndim != card.spatial_dims:
            raise MedloopError(f"{image_path} is a {image.ndim}-D image but model {card.name} segments {card.spatial_dims}-D images; "
                               f"start from a {image.ndim}-D model")
        check_input(image, card)
        check_same_grid(image, mask)
        labels = np.asarray(mask.array).astype(np.int64)
        top = int(labels.max()) if labels.size else 0
        if top >= len(card.classes) or int(labels.min()) < 0:
            raise MedloopError(f"{mask_path} has label {top if top >= len(card.classes) else int(labels.min())} but model "
                               f"{card.name} has classes 0..{len(card.classes) - 1}; give masks with those labels")
        images.append(network_input(image, card))
        masks.append(labels)
    return images, masks


def _config(epochs: int | None) -> Any:
    from medloop.app.engine.augment import AugmentConfig
    from medloop.app.engine.train import TrainConfig
    from medloop.models.recipes import loss_by_name

    aug = AugmentConfig.none()
    aug.p_flip = 0.5
    # Dice + cross-entropy, as the paper trains with Dice: a few small objects per image otherwise
    # teach "all background" first.
    return TrainConfig(epochs=epochs or 20, steps_per_epoch=20, batch_size=8, lr=1e-3, augment=aug,
                       foreground_fraction=0.0, loss=loss_by_name("dice_ce"))


def _write_model(model, base_card: dict, out: Path, name: str, description: str, size, training: dict) -> None:
    """Weights (atomic) and a card derived from ``base_card`` that runs at input size ``size``."""
    import torch

    from medloop.app.io.atomic import atomic_target
    from medloop.models.card import write_card
    from medloop.models.registry import sha256_of

    out.mkdir(parents=True, exist_ok=True)
    with atomic_target(out / "weights.pt", suffix=".pt") as tmp:
        torch.save(model.state_dict(), tmp)
    card = dict(base_card)
    card.update(name=name, description=description, training=training)
    card["weights"] = {**card["weights"], "source": "weights.pt", "sha256": sha256_of(out / "weights.pt")}
    card["inference"] = {**card.get("inference", {}), "input_size": [int(v) for v in size]}
    card.pop("test_data", None)
    write_card(card, out / "card.json")
