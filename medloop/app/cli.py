"""`medloop <verb>`: the command-line entry point.

Every user error is a ``MedloopError``: printed as one line ``medloop: error: …`` on stderr,
exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from medloop import __version__
from medloop.app.errors import MedloopError

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
    gui.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="images to open")
    gui.add_argument("--labels", nargs="*", type=Path, default=[], metavar="MASK", help="label maps to open")

    demo = sub.add_parser("demo", help="open the packaged brain sample in the GUI")
    demo.add_argument("--screenshot", type=Path, metavar="PNG", help="render the viewer to PNG and exit (works headless)")

    info = sub.add_parser("info", help="print an image's shape, dtype and geometry")
    info.add_argument("path", type=Path, metavar="PATH")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    return parser


def _fmt(values) -> str:
    return " ".join(f"{float(v):.6g}" if float(v) != int(float(v)) else f"{float(v):.1f}" for v in values)


def cmd_info(args: argparse.Namespace) -> int:
    from medloop.app.io.read import read_image

    image = read_image(args.path)
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
    return 0


def cmd_gui(args: argparse.Namespace) -> int:
    from medloop.app.io.read import read_image

    # Read everything first: a bad path is reported before any window opens.
    images = [read_image(p) for p in args.paths]
    labels = [read_image(p) for p in args.labels]
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


COMMANDS = {"info": cmd_info, "gui": cmd_gui, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command or "gui"
    if args.command is None:
        args.paths, args.labels = [], []
    try:
        return COMMANDS[command](args)
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
