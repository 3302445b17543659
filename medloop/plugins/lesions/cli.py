"""``medloop lesions synthesize | augment | anomaly | phantom | train``: the lesion verbs.

Every bad input (spec §1, §3, §6) is a ``MedloopError`` (mostly
:class:`~medloop.plugins.lesions.checks.LesionInputError`) raised before any compute; the shell
prints it as one line on stderr and exits 2. Outputs keep the input's geometry.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medloop.app.verbs import add_cohort_options, cohort_options, cohort_printer, progress_printer, training_printer

ACTIONS = "synthesize, augment, anomaly, phantom or train"


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """Add ``medloop lesions`` and its actions."""
    lesions = sub.add_parser("lesions", help=f"lesion synthesis and anomaly maps: {ACTIONS.replace(' or', ',')}")
    actions = lesions.add_subparsers(dest="lesions_command", metavar="ACTION", parser_class=type(lesions))
    lesions.set_defaults(handler=lambda args: lesions.error(f"choose an action: {ACTIONS}"))
    _add_synthesize(actions)
    _add_augment(actions)
    _add_anomaly(actions)
    _add_phantom(actions)
    _add_train(actions)


def _add_synthesis_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="lesion-unit-bone", help="translator model name or folder (default lesion-unit-bone)")
    p.add_argument("--scorer", default=None, metavar="MODEL", help="filter classifier (e.g. lesion-classifier-bone)")
    p.add_argument("--threshold", type=float, default=None, metavar="T", help="keep results the filter scores >= T (in [0, 1])")
    p.add_argument("--seed", type=int, default=0, help="seed of the crop placement (box k uses seed + k)")
    p.add_argument("--s", type=int, default=2, help="crop side = s x the box's longer side; 1 or 2 (default 2)")
    p.add_argument("--n", type=float, default=1.0, help="blend exponent of the cosine map (default 1)")
    p.add_argument("--allow-no-bone", action="store_true", help="paste into patches darker than 0.15 on average")


def _add_synthesize(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("synthesize", help="draw a lesion into each box of a healthy 2-D image (Gupta et al.)")
    p.add_argument("input", type=Path, metavar="IMAGE")
    p.add_argument("--box", type=float, nargs=4, action="append", required=True, metavar=("Y0", "X0", "Y1", "X1"),
                   help="box in pixels, rows Y0..Y1-1 and columns X0..X1-1 (repeat for more lesions)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="image with the lesions (input's geometry)")
    p.add_argument("--mask-out", type=Path, default=None, metavar="M", help="derived pseudo-mask |out - in| > 5 %% inside the boxes")
    _add_synthesis_options(p)
    p.set_defaults(handler=cmd_synthesize)


def _add_augment(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("augment", help="synthesise lesions into a folder of healthy images (boxes from a CSV)")
    p.add_argument("input", type=Path, metavar="DIR", help="folder of healthy 2-D images")
    p.add_argument("--boxes", type=Path, required=True, metavar="CSV", help="rows source,y0,x0,y1,x1 (several per source)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR",
                   help="images, pseudo-masks, boxes and manifest.csv (source, output, mask, box, s, seed, score, kept)")
    p.add_argument("--no-masks", action="store_true", help="do not write the derived pseudo-masks")
    _add_synthesis_options(p)
    p.set_defaults(handler=cmd_augment)


def _add_anomaly(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("anomaly", help="autoencoder residual map (Baur et al.) of an image, a slice stack or a folder")
    p.add_argument("input", type=Path, metavar="IMAGE", help="2-D image or stack of axial slices in [0, 1]; or a folder (cohort)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="MAP", help="residual map r (a folder for a cohort)")
    p.add_argument("--labels-out", type=Path, default=None, metavar="L", help="labels r >= t (uint8)")
    p.add_argument("--annotation-out", type=Path, default=None, metavar="A",
                   help="the labels as a Correction annotation (lesion 2, background ring 1, 0 unannotated): correct it, "
                        "then medloop train --weak strokes --annotation A --model lesion-student-brain")
    p.add_argument("--model", default="lesion-anomaly-brain", help="anomaly model name or folder")
    p.add_argument("--threshold", type=float, default=None, metavar="T", help="residual threshold t (default: the model's calibrated t)")
    p.add_argument("--mask", type=Path, default=None, help="brain mask (default: image > 0)")
    add_cohort_options(p, "cohort: ")
    p.set_defaults(handler=cmd_anomaly)


def _add_phantom(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("phantom", help="write seeded phantoms with exact lesion masks, healthy twins and boxes")
    p.add_argument("kind", choices=("brain", "bone", "chest"))
    p.add_argument("output", type=Path, metavar="OUTDIR")
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lesion-fraction", type=float, default=0.5, help="fraction of phantoms with lesions (default 0.5)")
    p.set_defaults(handler=cmd_phantom)


def _add_train(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("train", help="train a lesion model from a recipe (lesion-unit-bone, lesion-classifier-bone, lesion-anomaly-brain)")
    p.add_argument("--recipe", required=True, help="packaged recipe name or a recipe file")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output model folder")
    p.set_defaults(handler=cmd_train)


def _synthesize_settings(args: argparse.Namespace):
    from medloop.plugins.lesions.apply import SynthesizeFileSettings
    from medloop.plugins.lesions.checks import check_scale, check_threshold

    check_scale(args.s)
    if args.threshold is not None:
        check_threshold(args.threshold)
    return SynthesizeFileSettings(args.model, args.seed, args.s, args.n, args.threshold, args.scorer, args.allow_no_bone)


def cmd_synthesize(args: argparse.Namespace) -> int:
    from medloop.plugins.lesions.apply import synthesize_file

    done = synthesize_file(args.input, args.output, [tuple(b) for b in args.box], _synthesize_settings(args), args.mask_out)
    score = "" if done["score"] is None else f"; filter score {done['score']:.3f}" + (
        "" if done["kept"] is None else (" (kept)" if done["kept"] else " (below t: not kept)"))
    print(f"wrote {args.output} ({len(done['crops'])} lesion(s), crops {done['crops']}{score})")
    return 0


def cmd_augment(args: argparse.Namespace) -> int:
    from medloop.plugins.lesions.apply import augment_folder

    rows = augment_folder(args.input, args.boxes, args.output, _synthesize_settings(args), not args.no_masks,
                          progress_printer("augment"))
    images = {r.source: r.kept for r in rows}
    kept = sum(1 for k in images.values() if k is not False)
    print(f"{len(images)} image(s), {len(rows)} lesion(s): {kept} image(s) kept and written to {args.output}; "
          f"manifest {args.output / 'manifest.csv'}")
    return 0


def cmd_anomaly(args: argparse.Namespace) -> int:
    from medloop.plugins.lesions.apply import anomaly_file

    if args.input.is_dir() or args.workers is not None or args.scheduler:
        from medloop.plugins.lesions.pseudolabels import run_pseudolabel_folder

        report = run_pseudolabel_folder(args.input, args.output, args.model, args.threshold, cohort_printer,
                                        **cohort_options(args))
        print(report.summary())
        return 2 if report.failed else 0
    done = anomaly_file(args.input, args.output, args.model, args.threshold, args.labels_out, args.mask, args.annotation_out)
    labels = f"; {done['voxels']} voxels >= t = {done['threshold']:.4f} in {args.labels_out}" if args.labels_out else ""
    print(f"wrote {args.output} (residual map, max {done['max']:.3f}{labels})")
    return 0


def cmd_phantom(args: argparse.Namespace) -> int:
    from medloop.plugins.lesions.apply import write_phantoms
    from medloop.plugins.lesions.checks import check_count

    out = write_phantoms(args.kind, args.output, check_count(args.count, "--count"), args.seed, args.lesion_fraction)
    print(f"wrote {args.count} {args.kind} phantom(s) to {out} (image, _lesion, _healthy, _anatomy; boxes.csv)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from medloop.plugins.lesions.recipes import train_lesion_recipe

    out = train_lesion_recipe(args.recipe, args.out, progress=training_printer(str(args.recipe), epochs_only=True))
    print(f"wrote {out} (use it with --model {out})")
    return 0


class _AugmentTraining:
    """``medloop train --recipe R --augment-lesions MODEL``: a lesion classifier recipe trained with
    synthetic positives (Gupta et al.): the translator makes lesions in healthy training images,
    the baseline classifier (trained on the real images first) keeps those it scores >= t."""

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--augment-lesions", metavar="MODEL", default=None,
                            help="lesions: add synthetic lesions made by this translator (e.g. lesion-unit-bone) as "
                                 "positives; the recipe must be a lesion classifier recipe (e.g. lesion-classifier-bone)")
        parser.add_argument("--augment-threshold", type=float, default=None, metavar="T",
                            help="lesions: keep synthetic images the baseline scores >= T (default: T in 0.5/0.7/0.9 "
                                 "chosen on validation AUC)")

    def run(self, args: argparse.Namespace) -> int | None:
        if not getattr(args, "augment_lesions", None):
            return None
        from medloop.app.errors import MedloopError
        from medloop.plugins.lesions.checks import check_threshold
        from medloop.plugins.lesions.recipes import train_lesion_recipe

        if not args.recipe:
            raise MedloopError("--augment-lesions needs --recipe, a lesion classifier recipe (e.g. lesion-classifier-bone)")
        if args.augment_threshold is not None:
            check_threshold(args.augment_threshold, "--augment-threshold")
        augment = {"translator": args.augment_lesions, "threshold": args.augment_threshold}
        out = train_lesion_recipe(args.recipe, args.out, progress=training_printer(str(args.recipe), epochs_only=True),
                                  augment=augment, kinds=("classifier",))
        print(f"wrote {out} (trained with synthetic lesions from {args.augment_lesions})")
        return 0


TRAINING = _AugmentTraining()
