"""`medloop <verb>`: the command-line entry point.

Every user error is a ``MedloopError``: printed as one line ``medloop: error: ...`` on stderr,
exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import NoReturn, Sequence

import numpy as np

from medloop import __version__
from medloop.app.errors import MedloopError, MedloopWarning
from medloop.app.review.review_cli import add_review_parser, cmd_review

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line, like every other medloop error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"medloop: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="medloop",
        description="Review, correct and retrain medical-image models. "
        "With no command, opens the GUI.",
    )
    parser.add_argument("--version", action="version", version=f"medloop {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    gui = sub.add_parser("gui", help="open napari with medloop's panels and the given files")
    gui.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="images or DICOM folders to open")
    gui.add_argument(
        "--labels", nargs="*", type=Path, default=[], metavar="MASK",
        help="label maps to open over the first image (must share its grid)",
    )
    _add_read_options(gui)

    demo = sub.add_parser("demo", help="open the packaged brain sample in the GUI")
    demo.add_argument("--screenshot", type=Path, metavar="PNG", help="render the viewer to PNG and exit (works headless)")

    info = sub.add_parser("info", help="print an image's shape, dtype and geometry (a DICOM folder lists its series)")
    info.add_argument("path", type=Path, metavar="PATH")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    _add_read_options(info)

    convert = sub.add_parser("convert", help="convert an image or DICOM folder to NIfTI/NRRD/MHA/TIFF, keeping geometry")
    convert.add_argument("input", type=Path, metavar="IN", help="image file or DICOM folder")
    convert.add_argument("output", type=Path, metavar="OUT", help="output file (.nii.gz, .nii, .nrrd, .mha, .tif)")
    _add_read_options(convert)

    seg = sub.add_parser("segment", help="segment an image with a model; labels keep the input's exact geometry")
    seg.add_argument("input", type=Path, metavar="IN", help="image file or DICOM folder")
    seg.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="label map (.nii.gz, .nrrd, .mha, .tif)")
    seg.add_argument("--model", required=True, help="model name (see 'medloop models') or a model folder")
    seg.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    seg.add_argument("--tile", type=int, nargs="+", metavar="N", help="tile size in voxels (one value or one per axis)")
    seg.add_argument("--overlap", type=float, help="tile overlap fraction (default: the model card's)")
    seg.add_argument("--batch-size", type=int, default=2, help="tiles per forward pass")
    seg.add_argument("--probabilities", type=Path, metavar="PROBS", help="also write per-class probabilities here")
    seg.add_argument("--models-dir", type=Path, help="folder of registered models (default: your user data folder)")
    seg.add_argument("--upscale", nargs="+", metavar="AXIS=K", help="output k times finer along these axes of the image (z, y, x), e.g. z=3: segment sub-voxel shifted copies and interleave (seed 000)")
    seg.add_argument("--upscale-fusion", choices=["mean", "vote"], default="mean", help="--upscale --upscale-overlap: fuse by probability mean or majority vote")
    seg.add_argument("--upscale-overlap", action="store_true", help="--upscale: predict every fine voxel from both neighbouring coarse voxels and fuse (2x the passes per axis)")
    seg.add_argument("--upscale-align", choices=["centre", "start"], default="centre", help="--upscale: fine voxels centred in their coarse voxel (default) or starting at its centre (the paper's)")
    seg.add_argument("--upscale-order", type=int, choices=[1, 3], default=3, help="--upscale: image interpolation of the shifted copies (3 cubic B-spline, 1 linear)")
    seg.add_argument("--cascade", metavar="FINE_MODEL", help="segment-then-segment (seed 002, 2-D images): --model finds the objects on the image resized to its input size, FINE_MODEL segments a crop around each")
    seg.add_argument("--cascade-padding", type=int, metavar="K", help="--cascade: pixels added around each object's box (default: input size / 8)")
    _add_read_options(seg)

    models = sub.add_parser("models", help="list the model zoo, or register your own model")
    models.add_argument("--json", action="store_true", help="print machine-readable JSON")
    models.add_argument("--models-dir", type=Path, help="folder of registered models (default: your user data folder)")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION", parser_class=_Parser)
    register = models_sub.add_parser("register", help="copy weights + card into the models folder")
    register.add_argument("weights", type=Path, metavar="WEIGHTS", help="state-dict file (.pt) or .safetensors")
    register.add_argument("--card", type=Path, required=True, help="the model card (card.json)")

    train = sub.add_parser(
        "train", help="train a model from a recipe, or retrain one from weak annotations (--weak)"
    )
    train.add_argument("--recipe", help="packaged recipe name (e.g. brain-tissue-t1) or a recipe file")
    train.add_argument("--out", type=Path, required=True, metavar="DIR", help="output model folder (--weak: versions folder)")
    train.add_argument("--epochs", type=int, help="override the number of epochs")
    train.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    train.add_argument("--weak", choices=["strokes", "boxes", "points"], help="retrain --model from weak annotations")
    train.add_argument("--image", type=Path, help="--weak: the annotated image")
    train.add_argument("--annotation", type=Path, help="--weak: stroke label image, or boxes/points .csv/.npy")
    train.add_argument("--model", help="--weak: model to start from (name, or name@vN)")
    train.add_argument("--models-dir", type=Path, help="folder of registered models (default: your user data folder)")
    train.add_argument("--seed", type=int, default=0, help="--weak: random seed (same seed, same weights)")
    train.add_argument("--balancing", default="auto", choices=["auto", "none", "instance", "mini-batch"], help="--weak strokes: loss balancing")
    train.add_argument("--rounds", type=int, default=3, help="--weak boxes: at most this many refinement rounds")
    train.add_argument("--unlabeled", type=Path, nargs="+", default=[], metavar="IMG", help="--weak boxes: unannotated images for stage 2 (Cues 2)")
    train.add_argument("--cascade-coarse", action="store_true", help="train the coarse model of a segment-then-segment cascade from --model's weights on whole --images resized to --input-size")
    train.add_argument("--input-size", type=int, metavar="S", help="--cascade-coarse: the input size S (default: --model's)")
    train.add_argument("--coarse-target", choices=["any", "area"], default="any",
                       help="--cascade-coarse: masks at S keep every object ('any', default) or are resized by area (the paper's)")
    train.add_argument("--cascade-fine", action="store_true", help="train the fine model of a segment-then-segment cascade from --model (the coarse model) on ground-truth crops of --images/--masks")
    train.add_argument("--images", type=Path, nargs="+", default=[], metavar="IMG", help="--cascade-coarse/--cascade-fine: training images")
    train.add_argument("--masks", type=Path, nargs="+", default=[], metavar="MASK", help="--cascade-coarse/--cascade-fine: their label maps, same order")
    train.add_argument("--name", help="--cascade-coarse/--cascade-fine: the new model's name (default: MODEL-coarse / MODEL-fine)")
    train.add_argument("--crf", action="store_true", help="--weak points: add the CRF-loss fine-tune stage")
    train.add_argument("--boundary-loss", action="store_true", help="--weak strokes: generalised Dice + boundary loss on fully annotated tiles (small structures)")
    add_review_parser(sub)
    return parser


def _add_read_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--series", metavar="S", help="DICOM folder with several series: UID, description or number")
    parser.add_argument(
        "--allow-irregular", action="store_true",
        help="DICOM series with missing slices: resample onto a regular grid instead of refusing",
    )


def _read(args: argparse.Namespace, path: Path):
    from medloop.app.io.read import read_image

    return read_image(path, series=args.series, allow_irregular=args.allow_irregular)


def _fmt(values) -> str:
    return " ".join(f"{float(v):.6g}" if float(v) != int(float(v)) else f"{float(v):.1f}" for v in values)


def cmd_info(args: argparse.Namespace) -> int:
    if args.path.is_dir() and args.series is None:
        from medloop.app.io.dicom import list_dicom_series

        series = list_dicom_series(args.path)
        if len(series) > 1:
            return _print_series(args, series)
    image = _read(args, args.path)
    axes = ("z", "y", "x")[-image.ndim :] + (("c",) if image.channel_axis else ())
    record = {
        "path": str(args.path),
        "shape": list(image.shape),
        "axes": list(axes),
        "dtype": str(image.dtype),
        "spacing": list(image.spacing),
        "origin": list(image.origin),
        "direction": image.direction.tolist(),
        "unit": image.unit,
        "modality": image.modality or "unknown",
    }
    if image.is_multiscale:
        record["levels"] = [list(level.shape) for level in image.pyramid]
        record["microns_per_pixel"] = list(image.spacing) if image.unit == "um" else None
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    xyz = "x, y, z"[: 3 * image.ndim - 2]
    print(f"file       {record['path']}")
    print(f"shape      {' x '.join(map(str, image.shape))} ({', '.join(axes)})")
    print(f"dtype      {record['dtype']}")
    print(f"spacing    {_fmt(image.spacing)} {image.unit} ({xyz})")
    print(f"origin     {_fmt(image.origin)} {image.unit} ({xyz})")
    print(f"direction  {' / '.join(_fmt(row) for row in image.direction)}")
    print(f"modality   {record['modality']}")
    if image.is_multiscale:
        print(f"levels     {len(image.pyramid)}: " + ", ".join(" x ".join(map(str, s[:2])) for s in record["levels"]))
        print(f"um/pixel   {_fmt(image.spacing)}" if image.unit == "um" else "um/pixel   unknown")
    return 0


def _print_series(args: argparse.Namespace, series) -> int:
    rows = [
        {"number": i, "description": s.description, "uid": s.uid, "modality": s.modality, "files": len(s.files)}
        for i, s in enumerate(series, start=1)
    ]
    if args.json:
        print(json.dumps({"path": str(args.path), "series": rows}, indent=2))
        return 0
    print(f"{args.path} holds {len(rows)} DICOM series; pick one with --series NUMBER|DESCRIPTION|UID")
    for r in rows:
        print(f"  {r['number']}: {r['description'] or '(no description)'}  {r['modality']}  {r['files']} files  {r['uid']}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from medloop.app.io.write import write_image

    image = _read(args, args.input)
    written = write_image(image, args.output)
    print(f"wrote {written}")
    return 0


def cmd_gui(args: argparse.Namespace) -> int:
    from medloop.app.io.validate import check_same_grid

    # Read everything first: a bad path or a mismatched label map is reported before any window opens.
    images = [_read(args, p) for p in args.paths]
    labels = [_read(args, p) for p in args.labels]
    if labels and not images:
        raise MedloopError("--labels needs an image to lie on; give the image path too")
    for mask in labels:
        check_same_grid(images[0], mask)
    from medloop.app.gui.launcher import run_gui

    return run_gui(images, labels)


def cmd_demo(args: argparse.Namespace) -> int:
    from medloop.app.gui.launcher import run_demo

    if args.screenshot is not None and not args.screenshot.parent.resolve().is_dir():
        raise MedloopError(f"cannot write screenshot {args.screenshot}: folder does not exist; create it first")
    code = run_demo(args.screenshot)
    if args.screenshot is not None:
        print(f"wrote {args.screenshot}")
    return code


def cmd_segment(args: argparse.Namespace) -> int:
    from medloop.app.io.write import write_image
    from medloop.plugins.segmentation.method import SegmentParams, segment

    from medloop.plugins.segmentation.upscale import parse_factors

    image = _read(args, args.input)
    tile = tuple(args.tile) * (image.ndim if args.tile and len(args.tile) == 1 else 1) if args.tile else None
    factors = parse_factors(args.upscale, image.ndim) if args.upscale else None
    params = SegmentParams(
        model=args.model, device=args.device, roi_size=tile, overlap=args.overlap, batch_size=args.batch_size,
        probabilities=args.probabilities is not None, models_dir=args.models_dir, upscale=factors,
        upscale_align=args.upscale_align, upscale_overlap=args.upscale_overlap, upscale_fusion=args.upscale_fusion,
        upscale_order=args.upscale_order, cascade=args.cascade, cascade_padding=args.cascade_padding,
    )
    if args.cascade_padding is not None and not args.cascade:
        raise MedloopError("--cascade-padding needs --cascade FINE_MODEL; add it or leave the padding out")
    if image.is_multiscale:
        from medloop.plugins.segmentation.method import segment_slide_file

        if factors and any(k > 1 for k in factors):
            raise MedloopError(f"--upscale works on volumes and 2-D images, not on the slide {args.input}; leave it out")
        if args.cascade:
            raise MedloopError(f"--cascade works on 2-D images, not on the slide {args.input}; leave it out")
        prov = segment_slide_file(image, params, args.output, progress=_progress_printer("segment"))
        print(f"wrote {args.output} ({prov['seconds']} s on {prov['device']})")
        return 0
    result = segment(image, params, progress=_progress_printer("segment"))
    write_image(result.labels, args.output)
    if result.probabilities is not None:
        write_image(result.probabilities, args.probabilities)
    counts = np.bincount(np.asarray(result.labels.array).ravel())
    voxel_ml = float(np.prod(result.labels.spacing)) / 1000.0 if image.unit == "mm" else None
    for k, name in result.provenance["classes"].items():
        n = int(counts[k]) if k < len(counts) else 0
        volume = f", {n * voxel_ml:.1f} mL" if voxel_ml and image.ndim == 3 else ""
        print(f"{k} {name}: {n} voxels{volume}")
    if "cascade" in result.provenance:
        print(f"cascade: {result.provenance['cascade']['crops']} crops segmented by {args.cascade}")
    print(f"wrote {args.output} ({result.provenance['seconds']} s on {result.provenance['device']})")
    return 0


def _progress_printer(label: str):
    """Progress on stderr for a terminal only; piped output stays clean."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int, *_):
        print(f"\r{label}: {done}/{total}", end="\n" if done >= total else "", file=sys.stderr, flush=True)

    return show


def cmd_models(args: argparse.Namespace) -> int:
    from medloop.models.registry import list_models, register_model

    if args.models_command == "register":
        entry = register_model(args.weights, args.card, args.models_dir)
        print(f"registered {entry.name} in {entry.folder}")
        return 0
    entries = list_models(args.models_dir)
    rows = [
        {
            "name": e.name, "version": e.card.version,
            "dims": f"{e.card.spatial_dims}-D" + (" (volumes slice by slice)" if e.card.slice_axis is not None else ""),
            "modality": e.card.raw["medical"].get("modality", ""),
            "classes": list(e.card.classes.values()), "packaged": e.packaged, "folder": str(e.folder),
        }
        for e in entries
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no models; register one with 'medloop models register WEIGHTS --card CARD'")
    for r in rows if not args.json else []:
        where = "packaged" if r["packaged"] else r["folder"]
        print(f"{r['name']}  v{r['version']}  {r['dims']} {r['modality']}  classes: {', '.join(r['classes'])}  ({where})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from medloop.models.recipes import load_recipe, train_recipe

    if args.weak:
        return _train_weak(args)
    if args.cascade_fine or args.cascade_coarse:
        from medloop.plugins.segmentation.cascade_cli import train_cascade_model

        return train_cascade_model(args, lambda path: _read(argparse.Namespace(series=None, allow_irregular=False), path))
    if not args.recipe:
        raise MedloopError("train needs --recipe NAME|FILE, or --weak KIND with --image, --annotation and --model")
    recipe = load_recipe(args.recipe)

    def show(done: int, total: int, info: dict | None = None) -> None:
        extra = " ".join(f"{k}={v:.4g}" for k, v in (info or {}).items() if isinstance(v, (int, float)))
        print(f"train {recipe.name}: {done}/{total} {extra}", file=sys.stderr, flush=True)

    out = train_recipe(recipe, args.out, epochs=args.epochs, resume=args.resume, progress=show)
    print(f"wrote {out}")
    return 0


def _train_weak(args: argparse.Namespace) -> int:
    """Replay a session's weak annotations headlessly: the same code path as the Correction panel."""
    from medloop.plugins.correction.headless import load_annotation, train_weak

    missing = [flag for flag, value in (("--image", args.image), ("--annotation", args.annotation), ("--model", args.model)) if value is None]
    if missing:
        raise MedloopError(f"train --weak needs {', '.join(missing)}")
    image = _read(argparse.Namespace(series=None, allow_irregular=False), args.image)
    annotation = load_annotation(args.weak, args.annotation)
    entry = train_weak(
        args.weak, image, annotation, args.model, args.out, models_dir=args.models_dir, seed=args.seed,
        epochs=args.epochs, mode=args.balancing, rounds=args.rounds, crf=args.crf, boundary=args.boundary_loss,
        unlabeled=[_read(argparse.Namespace(series=None, allow_irregular=False), u) for u in args.unlabeled],
    )
    print(f"wrote {entry.name} in {entry.folder}")
    return 0


COMMANDS = {
    "info": cmd_info, "gui": cmd_gui, "demo": cmd_demo, "convert": cmd_convert, "segment": cmd_segment,
    "models": cmd_models, "train": cmd_train, "review": cmd_review,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command or "gui"
    if args.command is None:
        args.paths, args.labels, args.series, args.allow_irregular = [], [], None, False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", MedloopWarning)
            code = COMMANDS[command](args)
        # Only on success: an error message is self-contained and stays the one line printed.
        for w in caught:
            if issubclass(w.category, MedloopWarning):
                print(f"medloop: warning: {w.message}", file=sys.stderr)
        return code
    except MedloopError as exc:
        print(f"medloop: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("medloop: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: keep the one-line contract unless asked for details
        if args.debug:
            raise
        print(f"medloop: internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
