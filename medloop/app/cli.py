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

from medloop import __version__
from medloop.app.errors import MedloopError, MedloopWarning
from medloop.app.plugin import Plugin, load_plugins, resolve
from medloop.app.verbs import add_read_options as _add_read_options
from medloop.app.verbs import read as _read

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line, like every other medloop error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"medloop: error: {message} (see '{self.prog} --help')\n")


def build_parser(plugins: list[Plugin] | None = None) -> argparse.ArgumentParser:
    """The whole CLI: the shell's verbs, then every plugin's (from the registry)."""
    plugins = load_plugins() if plugins is None else plugins
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
    gui.set_defaults(handler=cmd_gui)

    demo = sub.add_parser("demo", help="open the packaged brain sample in the GUI")
    demo.add_argument("--screenshot", type=Path, metavar="PNG", help="render the viewer to PNG and exit (works headless)")
    demo.set_defaults(handler=cmd_demo)

    info = sub.add_parser("info", help="print an image's shape, dtype and geometry (a DICOM folder lists its series)")
    info.add_argument("path", type=Path, metavar="PATH")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    _add_read_options(info)
    info.set_defaults(handler=cmd_info)

    convert = sub.add_parser("convert", help="convert an image or DICOM folder to NIfTI/NRRD/MHA/TIFF, keeping geometry")
    convert.add_argument("input", type=Path, metavar="IN", help="image file or DICOM folder")
    convert.add_argument("output", type=Path, metavar="OUT", help="output file (.nii.gz, .nii, .nrrd, .mha, .tif)")
    convert.add_argument(
        "--level", type=int, metavar="K",
        help="whole-slide pyramid: write only level K (0 = full resolution); without it a pyramid "
        "goes whole, tile by tile, to a pyramidal .tif",
    )
    _add_read_options(convert)
    convert.set_defaults(handler=cmd_convert)

    models = sub.add_parser("models", help="list the model zoo, or register your own model")
    models.add_argument("--json", action="store_true", help="print machine-readable JSON")
    models.add_argument("--models-dir", type=Path, help="folder of registered models (default: your user data folder)")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION", parser_class=_Parser)
    register = models_sub.add_parser("register", help="copy weights + card into the models folder")
    register.add_argument("weights", type=Path, metavar="WEIGHTS", help="state-dict file (.pt) or .safetensors")
    register.add_argument("--card", type=Path, required=True, help="the model card (card.json)")
    # also after 'register' (SUPPRESS: when absent here, the value given before 'register' stays)
    register.add_argument("--models-dir", type=Path, default=argparse.SUPPRESS, help="folder of registered models")
    models.set_defaults(handler=cmd_models)

    _add_train_parser(sub, plugins)
    for plugin in plugins:  # each plugin's own verbs (medloop segment, medloop review ...)
        if plugin.cli:
            resolve(plugin.cli)(sub)
    return parser


def _add_train_parser(sub: argparse._SubParsersAction, plugins: list[Plugin]) -> None:
    """``medloop train``: from a recipe here; each plugin adds the flags of its own training modes."""
    train = sub.add_parser(
        "train", help="train a model from a recipe, or with a plugin's own training (--weak, --cascade-coarse, ...)"
    )
    train.add_argument("--recipe", help="packaged recipe name (e.g. brain-tissue-t1) or a recipe file")
    train.add_argument("--out", type=Path, required=True, metavar="DIR", help="output model folder (--weak: versions folder)")
    train.add_argument("--epochs", type=int, help="override the number of epochs")
    train.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    train.add_argument("--model", help="model to start from (name, or name@vN)")
    train.add_argument("--models-dir", type=Path, help="folder of registered models (default: your user data folder)")
    train.add_argument("--seed", type=int, default=0, help="random seed (same seed, same weights)")
    modes = [resolve(p.train) for p in plugins if p.train]
    for mode in modes:
        mode.add_options(train)
    train.set_defaults(handler=cmd_train, train_modes=modes)


def _fmt(values) -> str:
    return " ".join(f"{float(v):.6g}" if float(v) != int(float(v)) else f"{float(v):.1f}" for v in values)


def cmd_info(args: argparse.Namespace) -> int:
    if args.path.is_dir() and args.series is None:
        from medloop.app.io.dicom import list_dicom_series

        series = list_dicom_series(args.path)
        if len(series) > 1:
            return _print_series(args, series)
    image = _read(args, args.path)
    if image.pyramid:  # opening reads headers only: prove the tiles decode too
        from medloop.app.io.slide import check_slide_decodes

        check_slide_decodes(image)
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
    if getattr(args, "level", None) is not None:
        from medloop.app.io.slide import pyramid_level

        image = pyramid_level(image, args.level, args.input)
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


def cmd_models(args: argparse.Namespace) -> int:
    from medloop.models.registry import list_models, register_model

    if args.models_command == "register":
        entry = register_model(args.weights, args.card, args.models_dir)
        print(f"registered {entry.name} in {entry.folder}")
        return 0
    entries = list_models(args.models_dir)
    rows = [
        {
            "name": e.name, "version": e.card.version, "task": e.card.task,
            "dims": f"{e.card.spatial_dims}-D" + (" (volumes slice by slice)" if e.card.slice_axis is not None else ""),
            "modality": e.card.raw.get("medical", {}).get("modality", ""),
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
        what = f"classes: {', '.join(r['classes'])}" if r["classes"] else r["task"]
        print(f"{r['name']}  v{r['version']}  {r['task']}  {r['dims']} {r['modality']}  {what}  ({where})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """A plugin's training mode when its flags are given, else a recipe."""
    from medloop.app.verbs import training_printer
    from medloop.models.recipes import load_recipe, train_recipe

    for mode in args.train_modes:
        code = mode.run(args)
        if code is not None:
            return code
    if not args.recipe:
        raise MedloopError("train needs --recipe NAME|FILE, or --weak KIND with --image, --annotation and --model")
    recipe = load_recipe(args.recipe)
    out = train_recipe(recipe, args.out, epochs=args.epochs, resume=args.resume, progress=training_printer(recipe.name))
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args.paths, args.labels, args.series, args.allow_irregular = [], [], None, False
        args.handler = cmd_gui
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", MedloopWarning)
            code = args.handler(args)
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
