"""``medloop stain confocal | despeckle | transfer | normalize | train``: the staining verbs.

Every bad input (spec §5) is a ``MedloopError`` (mostly :class:`~.checks.StainInputError`),
raised before any compute; the shell prints it as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medloop.app.errors import MedloopError
from medloop.app.verbs import add_cohort_options, cohort_options, cohort_printer, progress_printer, training_printer

ACTIONS = "confocal, despeckle, transfer, normalize or train"


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """Add ``medloop stain`` and its actions."""
    stain = sub.add_parser("stain", help=f"digital staining: {ACTIONS.replace(' or', ',')}")
    actions = stain.add_subparsers(dest="stain_command", metavar="ACTION", parser_class=type(stain))
    stain.set_defaults(handler=lambda args: stain.error(f"choose an action: {ACTIONS}"))
    _add_confocal(actions)
    _add_despeckle(actions)
    _add_transfer(actions)
    _add_normalize(actions)
    _add_train(actions)


def _add_confocal(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("confocal", help="render a 2-channel confocal (FCM, RCM) image as pseudo-H&E (Gareau)")
    p.add_argument("input", type=Path, metavar="IN", help="image with a size-2 channel axis, first or last")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="RGB TIFF (uint8)")
    p.add_argument("--despeckle", action="store_true", help="despeckle RCM with the packaged stain-despeckle-rcm model first")
    p.add_argument("--fcm-channel", type=int, choices=(0, 1), default=0, help="which channel is fluorescence (default 0)")
    p.set_defaults(handler=cmd_confocal)


def _add_despeckle(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("despeckle", help="despeckle a 2-D reflectance (RCM) image")
    p.add_argument("input", type=Path, metavar="IN")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="float32 TIFF in [0, 1]")
    p.add_argument("--model", default="stain-despeckle-rcm", help="despeckle model name or folder")
    p.set_defaults(handler=cmd_despeckle)


def _add_transfer(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("transfer", help="stain transfer (CycleGAN): an RGB image, a whole slide, or a folder of them")
    p.add_argument("input", type=Path, metavar="IN", help="RGB image, slide (OpenSlide), or a folder / list file (cohort)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                   help="TIFF (a slide: tiled pyramidal TIFF); for a cohort an output folder")
    p.add_argument("--model", required=True, help="stain-transfer model name (e.g. stain-transfer-ihc) or folder")
    p.add_argument("--direction", choices=("a2b", "b2a"), default="a2b", help="A->B (G) or B->A (F) (default a2b)")
    p.add_argument("--tile", type=int, nargs=3, default=(512, 256, 128), metavar=("IN", "KEEP", "STRIDE"),
                   help="tile in / kept centre / stride in px (default CPU 512 256 128; paper 2048 1024 512)")
    p.add_argument("--level", type=int, default=0, metavar="L", help="slide pyramid level (default 0, full resolution)")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default: auto)")
    add_cohort_options(p, "cohort: ")
    p.set_defaults(handler=cmd_transfer)


def _add_normalize(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("normalize", help="Macenko or Reinhard stain normalisation to a reference image")
    p.add_argument("input", type=Path, metavar="IN")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="RGB TIFF (uint8)")
    p.add_argument("--method", choices=("macenko", "reinhard"), default="macenko")
    p.add_argument("--reference", type=Path, required=True, metavar="REF", help="RGB image (region) with the target stain")
    p.set_defaults(handler=cmd_normalize)


def _add_train(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("train", help="train a staining model from a recipe, or a CycleGAN on two unpaired image sets")
    p.add_argument("--recipe", help="packaged recipe (stain-transfer-ihc, stain-despeckle-rcm) or a recipe file")
    p.add_argument("--domain-a", type=Path, nargs="+", default=[], metavar="IMG", help="unpaired: RGB images of domain A")
    p.add_argument("--domain-b", type=Path, nargs="+", default=[], metavar="IMG", help="unpaired: RGB images of domain B")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output model folder")
    p.add_argument("--epochs", type=int, default=10, help="unpaired: epochs (default 10)")
    p.add_argument("--steps-per-epoch", type=int, default=4, help="unpaired: steps per epoch (default 4)")
    p.add_argument("--patch", type=int, default=64, help="unpaired: patch size in px (default 64)")
    p.add_argument("--batch", type=int, default=6, help="unpaired: batch (default 6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="stain-transfer-custom", help="unpaired: the model's name")
    p.set_defaults(handler=cmd_train)


def cmd_confocal(args: argparse.Namespace) -> int:
    from medloop.plugins.staining.apply import confocal_file

    out = confocal_file(args.input, args.output, args.fcm_channel, args.despeckle)
    h, w, _ = out["shape"]
    print(f"wrote {args.output} ({w} x {h} pseudo-H&E{', RCM despeckled' if args.despeckle else ''})")
    return 0


def cmd_despeckle(args: argparse.Namespace) -> int:
    from medloop.plugins.staining.apply import despeckle_file

    out = despeckle_file(args.input, args.output, args.model)
    print(f"wrote {args.output} ({out['shape'][1]} x {out['shape'][0]} despeckled reflectance)")
    return 0


def _is_cohort(args: argparse.Namespace) -> bool:
    from medloop.app.io.read import suffix_of, supported_suffixes
    from medloop.app.io.slide import SLIDE_SUFFIXES

    if args.workers is not None or args.scheduler or args.input.is_dir():
        return True
    known = set(supported_suffixes()) | set(SLIDE_SUFFIXES)
    return args.input.is_file() and suffix_of(args.input) not in known


def cmd_transfer(args: argparse.Namespace) -> int:
    """One image or slide, or a cohort, through a stain-transfer model."""
    from medloop.plugins.staining.apply import DIRECTIONS, TransferSettings, transfer_file

    settings = TransferSettings(args.model, DIRECTIONS[args.direction], tuple(args.tile), args.level, args.device)
    if _is_cohort(args):
        return _transfer_cohort(args, settings)
    out = transfer_file(args.input, args.output, settings, progress_printer("transfer"))
    h, w = out["shape"][:2]
    sx, sy = out["spacing"][:2]
    kind = "tiled pyramidal slide" if out["kind"] == "slide" else "RGB image"
    print(f"wrote {args.output} ({kind}, {w} x {h} px at {sx:g} x {sy:g} per px; {args.model} {settings.direction})")
    return 0


def _transfer_cohort(args: argparse.Namespace, settings) -> int:
    from dataclasses import replace

    from medloop.plugins.staining.apply import transfer_cohort

    if args.output.suffix.lower() in (".tif", ".tiff"):
        raise MedloopError(f"{args.input} is a cohort (a folder or list of images); give -o an output folder, not the file {args.output}")
    model = str(Path(args.model).absolute()) if Path(args.model).exists() else args.model  # workers may run elsewhere
    settings = replace(settings, model=model)

    report = transfer_cohort(args.input, args.output, settings, progress=cohort_printer, **cohort_options(args))
    print(report.summary())
    return 2 if report.failed else 0


def cmd_normalize(args: argparse.Namespace) -> int:
    from medloop.plugins.staining.apply import normalise_file

    out = normalise_file(args.input, args.output, args.reference, args.method)
    print(f"wrote {args.output} ({out['shape'][1]} x {out['shape'][0]}, {args.method} to {args.reference.name})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """A recipe's model, or a CycleGAN on two unpaired image sets."""
    if args.domain_a or args.domain_b:
        if args.recipe:
            raise MedloopError("give --recipe (train from a recipe) or --domain-a/--domain-b (unpaired images), not both")
        return _train_unpaired(args)
    if not args.recipe:
        raise MedloopError("stain train needs --recipe NAME|FILE, or --domain-a IMG... --domain-b IMG...")
    from medloop.plugins.staining.recipes import train_stain_recipe

    out = train_stain_recipe(args.recipe, args.out, progress=training_printer(str(args.recipe), epochs_only=True))
    print(f"wrote {out}")
    return 0


def _train_unpaired(args: argparse.Namespace) -> int:
    from medloop.plugins.staining.apply import train_unpaired
    from medloop.plugins.staining.checks import check_positive
    from medloop.plugins.staining.cyclegan import CycleGANConfig

    if not (args.domain_a and args.domain_b):
        raise MedloopError("unpaired training needs both --domain-a IMG... and --domain-b IMG...")
    check_positive(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, patch=args.patch, batch=args.batch)
    config = CycleGANConfig(patch=args.patch, batch=args.batch, epochs=args.epochs,
                            steps_per_epoch=args.steps_per_epoch, seed=args.seed)
    out = train_unpaired(args.domain_a, args.domain_b, args.out, config, args.name, training_printer(args.name, epochs_only=True))
    print(f"wrote {out} (load it with --model {out})")
    return 0
