"""The correction plugin's ``medloop train --weak strokes|boxes|points`` mode: replay a session's
weak annotations headlessly, through the same code path as the Correction panel."""

from __future__ import annotations

import argparse
from pathlib import Path

from medloop.app.errors import MedloopError
from medloop.app.verbs import read


class WeakTraining:
    """``medloop train --weak KIND --image IMG --annotation ANN --model NAME[@vN] --out DIR``."""

    def add_options(self, train: argparse.ArgumentParser) -> None:
        train.add_argument("--weak", choices=["strokes", "boxes", "points"], help="retrain --model from weak annotations")
        train.add_argument("--image", type=Path, help="--weak: the annotated image")
        train.add_argument("--annotation", type=Path, help="--weak: stroke label image, or boxes/points .csv/.npy")
        train.add_argument("--balancing", default="auto", choices=["auto", "none", "instance", "mini-batch"], help="--weak strokes: loss balancing")
        train.add_argument("--rounds", type=int, default=3, help="--weak boxes: at most this many refinement rounds")
        train.add_argument("--unlabeled", type=Path, nargs="+", default=[], metavar="IMG", help="--weak boxes: unannotated images for stage 2 (Cues 2)")
        train.add_argument("--crf", action="store_true", help="--weak points: add the CRF-loss fine-tune stage")
        train.add_argument("--boundary-loss", action="store_true", help="--weak strokes: generalised Dice + boundary loss on fully annotated tiles (small structures)")

    def run(self, args: argparse.Namespace) -> int | None:
        if not args.weak:
            return None
        from medloop.plugins.correction.headless import load_annotation, train_weak

        missing = [flag for flag, value in (("--image", args.image), ("--annotation", args.annotation), ("--model", args.model)) if value is None]
        if missing:
            raise MedloopError(f"train --weak needs {', '.join(missing)}")
        plain = argparse.Namespace()
        image = read(plain, args.image)
        annotation = load_annotation(args.weak, args.annotation)
        entry = train_weak(
            args.weak, image, annotation, args.model, args.out, models_dir=args.models_dir, seed=args.seed,
            epochs=args.epochs, mode=args.balancing, rounds=args.rounds, crf=args.crf, boundary=args.boundary_loss,
            unlabeled=[read(plain, u) for u in args.unlabeled],
        )
        print(f"wrote {entry.name} in {entry.folder}")
        return 0


TRAINING = WeakTraining()
