"""``medloop interactive IMG --point X,Y,Z+ ... -o OBJ`` and ``medloop interactive replay IMG
--prompts prompts.csv -o labels``: click -> object headless, in physical millimetres.

Both run the same :class:`~medloop.plugins.interactive.session.PromptSession` as the panel; the
output keeps the image's geometry; every bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from medloop.app.errors import MedloopError
from medloop.plugins.interactive.prompts import Box, Point, PromptError


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """Add ``medloop interactive`` (and its ``replay`` form)."""
    p = sub.add_parser(
        "interactive", help="click -> object: segment one object from points (mm) or a box; 'interactive replay' re-runs a prompt log",
        description="medloop interactive IMG --point X,Y,Z+ [--point X,Y,Z-] [--box ...] -o OBJ.nii.gz  |  "
                    "medloop interactive replay IMG --prompts prompts.csv -o labels.nii.gz",
    )
    p.add_argument("paths", nargs="+", metavar="IMG", help="the image (or: replay IMG)")
    p.add_argument("--point", action="append", default=[], metavar="X,Y,Z±",
                   help="a click in physical mm (LPS, as the viewer's status bar reads), ending + (positive) or - (negative); repeat")
    p.add_argument("--box", action="append", default=[], metavar="X1,Y1,Z1:X2,Y2,Z2",
                   help="a box by two opposite corners in mm; on a volume both corners lie on one axial slice (see --box-plane)")
    p.add_argument("--box-plane", type=int, default=0, metavar="AXIS", help="array axis normal to a volume's box: 0 axial (default), 1 coronal, 2 sagittal")
    p.add_argument("--prompts", type=Path, metavar="CSV", help="replay: the prompt log (prompts.csv) to re-run")
    p.add_argument("--engine", default="classical", choices=("auto", "classical", "learned"), help="default classical (needs no weights)")
    p.add_argument("--tolerance", type=float, default=2.5, help="local threshold tolerance (default 2.5; larger takes more)")
    p.add_argument("--label", type=int, default=1, help="value written for the object (default 1)")
    p.add_argument("--labels", type=Path, metavar="IN", help="existing labels on the image's grid to add the object to (other classes stay locked)")
    p.add_argument("--ring-prediction", type=Path, metavar="PRED",
                   help="replay: the model's prediction (class indices, the image's grid) that the logged commits drew their rings from")
    p.add_argument("--log", type=Path, metavar="CSV", help="also write the prompt log here")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="output labels (NIfTI/NRRD/...), the image's geometry")
    p.set_defaults(handler=cmd_interactive)


def parse_point(text: str, ndim: int) -> Point:
    """``"12.5,-20,31+"`` -> a positive Point; one-line :class:`PromptError` otherwise."""
    raw = text.strip()
    sign = raw[-1:] if raw[-1:] in "+-" else ""
    if not sign:
        raise PromptError(f"--point {text!r}: end it with + (inside the object) or - (outside), e.g. 12.5,-20,31+")
    try:
        values = tuple(float(v) for v in raw[:-1].split(","))
    except ValueError:
        raise PromptError(f"--point {text!r}: coordinates must be numbers in mm, e.g. 12.5,-20,31+") from None
    if len(values) != ndim:
        raise PromptError(f"--point {text!r}: this {ndim}-D image needs {ndim} coordinates in mm")
    return Point(values, sign == "+")


def parse_box(text: str, ndim: int, plane: int) -> Box:
    """``"x1,y1,z1:x2,y2,z2"`` -> a Box (on a volume, normal to ``plane``)."""
    try:
        a, b = (tuple(float(v) for v in part.split(",")) for part in text.split(":"))
    except ValueError:
        raise PromptError(f"--box {text!r}: give two corners in mm as X1,Y1[,Z1]:X2,Y2[,Z2]") from None
    if len(a) != ndim or len(b) != ndim:
        raise PromptError(f"--box {text!r}: this {ndim}-D image needs {ndim} coordinates per corner")
    if ndim == 3 and plane not in (0, 1, 2):
        raise PromptError(f"--box-plane must be 0, 1 or 2, got {plane}")
    return Box((a, b), plane if ndim == 3 else None)


def _read_labels(args: argparse.Namespace, image) -> np.ndarray | None:
    from medloop.app.io.read import read_image
    from medloop.app.io.validate import check_same_grid

    if args.labels is None:
        return None
    labels = read_image(args.labels)
    check_same_grid(image, labels)
    return np.asarray(labels.array).astype(np.uint16)


def cmd_interactive(args: argparse.Namespace) -> int:
    """Segment one object (or replay a log) and write the labels with the image's geometry."""
    from medloop.app.io.read import read_image
    from medloop.app.io.write import write_image
    from medloop.plugins.interactive.params import InteractiveParams
    from medloop.plugins.interactive.session import PromptSession

    replaying = args.paths[0] == "replay"
    paths = args.paths[1:] if replaying else args.paths
    if len(paths) != 1:
        raise MedloopError("give one image: medloop interactive IMG --point ... -o OUT (or: medloop interactive replay IMG --prompts CSV -o OUT)")
    image = read_image(paths[0])
    params = InteractiveParams(engine=args.engine, tolerance=args.tolerance, label=args.label).validate()
    labels = _read_labels(args, image)
    if replaying:
        out = _replay(args, image, labels, params)
        message = f"replayed {args.prompts}"
    else:
        prompts = [parse_box(b, image.ndim, args.box_plane) for b in args.box] + [parse_point(p, image.ndim) for p in args.point]
        if not prompts:
            raise PromptError("give at least one --point X,Y,Z+ (in mm) or --box; see medloop interactive --help")
        session = PromptSession(image, labels, params, log_path=args.log)
        for prompt in prompts:
            update = session.add(prompt)
            print(f"{prompt.kind} {'+' if prompt.positive else '-'}: {update.message} ({update.info.get('ms', 0):.0f} ms)")
        out = session.labels
        message = f"object: {int(session.object_voxels)} voxels"
    write_image(image.with_array(np.asarray(out), channel_axis=False, metadata={}), args.output)
    print(f"{message}; wrote {args.output}")
    return 0


def _replay(args: argparse.Namespace, image, labels: np.ndarray | None, params) -> np.ndarray:
    from medloop.plugins.interactive.promptlog import read_log
    from medloop.plugins.interactive.session import replay

    if args.prompts is None:
        raise PromptError("replay needs --prompts prompts.csv (the prompt log the panel or --log wrote)")
    if args.point or args.box:
        raise PromptError("replay takes its prompts from --prompts only; drop --point/--box")
    rows = read_log(args.prompts)
    prediction = None
    if args.ring_prediction is not None:
        from medloop.app.io.read import read_image
        from medloop.app.io.validate import check_same_grid

        predicted = read_image(args.ring_prediction)
        check_same_grid(image, predicted)
        prediction = np.asarray(predicted.array).astype(np.int64)
    return replay(image, rows, labels, params, ring_prediction=prediction)


