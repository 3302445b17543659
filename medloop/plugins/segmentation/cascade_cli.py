"""`medloop train --cascade-coarse | --cascade-fine`: train one of the two models of a
segment-then-segment cascade (seed 002) from images and their label maps, and write it as
weights + card (see :mod:`medloop.plugins.segmentation.cascade_training`).

Wired into ``medloop/app/cli.py``; errors are ``MedloopError`` subclasses (one line, exit code 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medloop.app.errors import MedloopError


def train_cascade_model(args: argparse.Namespace, read) -> int:
    """Train the coarse (``args.cascade_coarse``) or fine model of a cascade from ``args.model``'s
    weights; ``read(path)`` reads an image. Prints the folder written."""
    from medloop.models.registry import build_model, get_model
    from medloop.plugins.segmentation import cascade_training as ct
    from medloop.plugins.segmentation.cascade import StageTrainParams, train_coarse_model, train_fine_model
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
    ct.check_input_size(base.name, network, size)
    pairs = [(read(i), read(m), str(i), str(m)) for i, m in zip(args.images, args.masks)]
    images, masks = ct.training_arrays(pairs, base.card)
    config = ct.training_config(args.epochs)

    def show(done: int, total: int, info: dict | None = None) -> None:
        if (info or {}).get("event") == "epoch":
            print(f"train: epoch {info['epoch']} loss {info['train_loss']:.4g}", file=sys.stderr, flush=True)

    if args.cascade_coarse:
        stage = StageTrainParams(size, config, seed=args.seed, target=args.coarse_target)
        result = train_coarse_model(network, images, masks, stage, progress=show)
        name = args.name or f"{base.name}-coarse"
        description = ct.coarse_description(base.name, size, args.coarse_target)
        training = {"cascade_coarse_of": base.name, "target": args.coarse_target}
    else:
        result = train_fine_model(network, images, masks, StageTrainParams(size, config, seed=args.seed), progress=show)
        name = args.name or f"{base.name}-fine"
        description = ct.fine_description(base.name, size)
        training = {"cascade_fine_of": base.name}
    training.update(images=len(images), epochs=result.epochs_done, seed=int(args.seed))
    out = Path(args.out)
    ct.write_model(result.model, base.card.raw, out, name, description, size, training)
    print(f"wrote {out} (register it with: medloop models register {out / 'weights.pt'} --card {out / 'card.json'})")
    return 0
