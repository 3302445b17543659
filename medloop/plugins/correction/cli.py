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
        train.add_argument(
            "--unannotated", default="select", choices=["select", "pseudo", "off"],
            help="--weak strokes: the unpainted pixels - select: pick the epoch by held-out strokes and agreement with a "
            "stroke-trained pixel classifier; pseudo: also train on its confident labels; off: strokes only",
        )
        train.add_argument("--suggest", type=int, default=0, metavar="N", help="--weak strokes: print the N regions to paint next")
        train.add_argument("--suggest-out", type=Path, metavar="FILE", help="--weak strokes: write the suggestions (.csv or .json)")

    def run(self, args: argparse.Namespace) -> int | None:
        if not args.weak:
            return None
        from medloop.plugins.correction.headless import load_annotation, train_weak

        missing = [flag for flag, value in (("--image", args.image), ("--annotation", args.annotation), ("--model", args.model)) if value is None]
        if missing:
            raise MedloopError(f"train --weak needs {', '.join(missing)}")
        suggest = int(args.suggest) or (10 if args.suggest_out else 0)
        if suggest and args.weak != "strokes":
            raise MedloopError("--suggest works with --weak strokes (it ranks where to paint next)")
        if suggest < 0:
            raise MedloopError(f"--suggest needs a positive number of regions, got {args.suggest}")
        plain = argparse.Namespace()
        image = read(plain, args.image)
        annotation = load_annotation(args.weak, args.annotation)
        entry = train_weak(
            args.weak, image, annotation, args.model, args.out, models_dir=args.models_dir, seed=args.seed,
            epochs=args.epochs, mode=args.balancing, rounds=args.rounds, crf=args.crf, boundary=args.boundary_loss,
            unlabeled=[read(plain, u) for u in args.unlabeled], unannotated=args.unannotated,
        )
        print(f"wrote {entry.name} in {entry.folder}")
        if suggest:
            print_suggestions(entry, image, annotation, suggest, args.suggest_out)
        return 0


def print_suggestions(entry, image, strokes, n: int, out: Path | None) -> None:
    """Rank where to paint next with the new version (``guidance``), print one line per region
    (voxel indices on the image's grid) and write them to ``out`` if given."""
    import numpy as np

    from medloop.models.registry import build_model
    from medloop.plugins.correction.guidance import suggest_with_teacher, write_suggestions
    from medloop.plugins.correction.weak_kit import model_input

    classes = entry.card.classes
    x = model_input(image, entry.card)
    suggestions, _, _ = suggest_with_teacher(build_model(entry), x, np.asarray(strokes), len(classes), n=n)
    for s in suggestions:
        where = ("" if s.slice is None else f"slice {s.slice}, ") + f"rows {s.box[0]}-{s.box[2]}, cols {s.box[1]}-{s.box[3]}"
        name = classes.get(s.predicted_class, s.predicted_class)
        print(f"paint next {s.rank}: {where} (unsure {s.uncertainty:.2f}, {s.distance_px:.0f} px from a stroke, predicted {name})")
    if out is not None:
        print(f"wrote {write_suggestions(suggestions, out)}")


TRAINING = WeakTraining()
