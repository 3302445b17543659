"""``medloop axons synth | train | trace | evaluate``: the axon tracker's verbs.

Every bad input is a ``MedloopError`` (mostly :class:`~.checks.TracingInputError`), which the
shell prints as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from medloop.app.errors import MedloopError
from medloop.app.verbs import add_cohort_options, cohort_options, cohort_printer, progress_printer, training_printer


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """Add ``medloop axons`` and its actions."""
    axons = sub.add_parser("axons", help="axon tracking (deep-RL tracer, Dai et al.): synth, train, trace, evaluate")
    actions = axons.add_subparsers(dest="axons_command", metavar="ACTION", parser_class=type(axons))
    axons.set_defaults(handler=lambda args: axons.error("choose an action: synth, train, trace or evaluate"))
    _add_synth(actions)
    _add_train(actions)
    _add_trace(actions)
    _add_evaluate(actions)


def _add_synth(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("synth", help="write synthetic axon images (TIFF), their true centrelines (SWC) and start points (CSV)")
    p.add_argument("outdir", type=Path, metavar="OUTDIR")
    p.add_argument("--preset", default="SI", help="SI, SI-RC, SI-W, SI-EN, SI-SN or SI-REAL (default SI)")
    p.add_argument("--count", type=int, default=10, metavar="N", help="number of images (default 10)")
    p.add_argument("--size", type=int, default=64, metavar="S", help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0, metavar="K", help="random seed: image i depends on (K, i) only")
    p.set_defaults(handler=cmd_synth)


def _add_train(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("train", help="train a tracker from a recipe, or fine-tune one on your images and SWC traces")
    p.add_argument("--recipe", help="packaged recipe name (axon-tracker-si) or a recipe file")
    p.add_argument("--images", type=Path, nargs="+", default=[], metavar="IMG", help="fine-tune: 2-D images")
    p.add_argument("--traces", type=Path, nargs="+", default=[], metavar="SWC", help="fine-tune: their true centrelines, one SWC per image (same order)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output tracker folder (actor.pt + card.json)")
    p.add_argument("--model", default=None, help="fine-tune: the tracker to start from (default axon-tracker-si)")
    p.add_argument("--iterations", type=int, help="PPO iterations (default: the recipe's; fine-tune 40)")
    p.add_argument("--episodes", type=int, default=16, help="fine-tune: episodes per iteration (default 16)")
    p.add_argument("--max-steps", type=int, help="fine-tune: step cap per episode (default 3 x the longest path / 2 px)")
    p.add_argument("--seed", type=int, default=0, help="fine-tune: random seed")
    p.add_argument("--name", help="fine-tune: the new tracker's name (default MODEL-finetuned)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    p.set_defaults(handler=cmd_train)


def _add_trace(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("trace", help="trace axons from seed points; IMAGE may be a folder or list file (a cohort)")
    p.add_argument("image", type=Path, metavar="IMAGE", help="2-D greyscale image, or a folder / list file of them")
    p.add_argument("--seeds", type=Path, required=True, metavar="SEEDS", help="napari Points CSV (index,axis-0,axis-1 = row, column); for a cohort also a folder of <id>.csv")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="SWC file; for a cohort an output folder (<id>.swc each)")
    p.add_argument("--model", default="axon-tracker-si", help="packaged tracker name, a tracker folder or an actor .pt (default axon-tracker-si)")
    p.add_argument("--max-steps", type=int, default=200, metavar="N", help="step cap per trace (default 200)")
    p.add_argument("--window-scale", type=float, default=1.0, help="1.0 for synthetic-like images, 1.5 for real two-photon data")
    p.add_argument("--stop-radius", type=float, default=3.0, metavar="PX", help="stop within this many px of an end point (default 3)")
    p.add_argument("--end-points", type=Path, metavar="CSV", help="napari Points CSV of end points (one image only): a trace stops near one; without them it runs on to the border or --max-steps")
    p.add_argument("--entropy-stop", type=float, metavar="H", help="stop when a step's policy entropy exceeds H (default off)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: these small nets are slower with more)")
    add_cohort_options(p, "cohort: ")
    p.set_defaults(handler=cmd_trace)


def _add_evaluate(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("evaluate", help="coverage and error of traces against true centrelines (both SWC)")
    p.add_argument("traces", type=Path, metavar="TRACES.swc")
    p.add_argument("truth", type=Path, metavar="TRUTH.swc")
    p.add_argument("--radius", type=float, default=3.0, metavar="PX", help="coverage radius in pixels (default 3)")
    p.add_argument("--spacing", type=float, nargs=2, metavar=("X", "Y"), help="pixel size of both files (default: their voxel-separation header, else pixels)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(handler=cmd_evaluate)


def cmd_synth(args: argparse.Namespace) -> int:
    """Write ``axon_NNNN.tif`` + ``.swc`` (truth) + ``.csv`` (start point) per image."""
    import tifffile

    from medloop.app.io.atomic import atomic_target
    from medloop.plugins.axons.checks import check_positive
    from medloop.plugins.axons.points import write_points_csv
    from medloop.plugins.axons.swc import write_swc
    from medloop.plugins.axons.synth import make_batch

    check_positive(count=args.count)
    axons = make_batch(args.count, args.size, args.preset, args.seed)  # checks preset and size before writing
    args.outdir.mkdir(parents=True, exist_ok=True)
    for i, axon in enumerate(axons):
        stem = args.outdir / f"axon_{i:04d}"
        with atomic_target(stem.with_suffix(".tif"), suffix=".tif") as tmp:
            tifffile.imwrite(tmp, axon.image)
        write_swc(stem.with_suffix(".swc"), [axon.centreline], meta=[{"preset": args.preset, "seed": args.seed, "index": i}])
        write_points_csv(stem.with_suffix(".csv"), axon.start[None])
    print(f"wrote {args.count} {args.preset} images ({args.size}x{args.size}) with true centrelines (.swc) and start points (.csv) to {args.outdir}")
    return 0


TRAINING_KEYS = ("val_coverage", "val_error", "train_return")  # what a tracker's epoch line shows


def cmd_train(args: argparse.Namespace) -> int:
    """A recipe's tracker, or a fine-tune on user images + SWC traces."""
    from medloop.plugins.axons.tracker import load_recipe, recipe_with, train_recipe

    if args.images or args.traces:
        if args.recipe:
            raise MedloopError("give --recipe (train from a recipe) or --images with --traces (fine-tune), not both")
        return _fine_tune(args)
    if not args.recipe:
        raise MedloopError("axons train needs --recipe NAME|FILE, or --images IMG... --traces SWC... to fine-tune")
    recipe = load_recipe(args.recipe)
    if args.iterations is not None:
        recipe = recipe_with(recipe, iterations=args.iterations)
    card = train_recipe(recipe, args.out, progress=training_printer(recipe.name, TRAINING_KEYS, epochs_only=True), resume=args.resume)
    _print_card(card)
    return 0


def _print_card(card_path: Path) -> None:
    card = json.loads(card_path.read_text(encoding="utf-8"))
    for preset, m in card["metrics"].get("held_out", {}).get("presets", {}).items():
        off = "never off track" if m["entropy_off"] is None else f"{m['entropy_off']:.2f} off track"  # no step >= 3 px off
        print(f"{preset}: coverage {m['coverage']:.1f} %, error {m['error']:.2f} ± {m['error_sd']:.2f} px, "
              f"{int(m['lost'])} lost stretches, entropy {m['entropy_on']:.2f} on track, {off}")
    print(f"wrote {card_path.parent} ({card['training']['seconds']} s of training)")


def _fine_tune(args: argparse.Namespace) -> int:
    from medloop.plugins.axons.finetune import fine_tune_files

    card = fine_tune_files(args, progress=training_printer(args.name or "fine-tune", TRAINING_KEYS, epochs_only=True))
    m = json.loads(card.read_text(encoding="utf-8"))["training"]["validation"]
    print(f"fine-tuned on {len(args.images)} images: coverage {_num(m.get('val_coverage'), 1)} %, "
          f"error {_num(m.get('val_error'), 2)} px on the training traces; wrote {card.parent}")
    return 0


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _trace_params(args: argparse.Namespace):
    from medloop.plugins.axons.trace import TraceParams

    return TraceParams(max_steps=args.max_steps, window_scale=args.window_scale, stop_radius_px=args.stop_radius,
                       entropy_stop=args.entropy_stop)


def _is_cohort(args: argparse.Namespace) -> bool:
    from medloop.app.io.read import suffix_of, supported_suffixes

    if args.workers is not None or args.scheduler or args.image.is_dir():
        return True
    return args.image.is_file() and suffix_of(args.image) not in supported_suffixes()


def cmd_trace(args: argparse.Namespace) -> int:
    """Trace one image (SWC out) or a cohort (a folder of SWC out)."""
    import numpy as np
    import torch

    from medloop.plugins.axons.batch import trace_image_file, write_traced
    from medloop.plugins.axons.checks import check_positive
    from medloop.plugins.axons.points import read_points_csv
    from medloop.plugins.axons.tracker import load_tracker

    check_positive(threads=args.threads)
    torch.set_num_threads(args.threads)
    if _is_cohort(args):
        return _trace_cohort(args)
    if args.output.suffix.lower() != ".swc":
        raise MedloopError(f"-o {args.output} must be an .swc file for one image (a folder only for a cohort)")
    if not args.output.resolve().parent.is_dir():  # before any work, not after the tracing
        raise MedloopError(f"cannot write {args.output}: folder {args.output.parent} does not exist; create it first")
    seeds = read_points_csv(args.seeds)
    ends = read_points_csv(args.end_points) if args.end_points else None
    tracker = load_tracker(args.model)
    traced = trace_image_file(args.image, seeds, tracker.actor, _trace_params(args), ends, progress_printer("trace"))
    write_traced(args.output, traced)
    for t in traced.traces:
        mean = f"{np.mean(t.entropy):.2f}" if len(t.entropy) else "n/a"
        print(f"trace {t.seed_id} from (row {t.vertices[0, 0]:g}, col {t.vertices[0, 1]:g}): "
              f"{len(t.vertices) - 1} steps, stopped: {t.stop_reason}, mean entropy {mean}")
    units = f"{traced.unit} (spacing {traced.spacing[0]:g} x {traced.spacing[1]:g})" if traced.spacing else "pixels"
    print(f"wrote {args.output} ({len(traced.traces)} traces in {units}; tracker {tracker.name})")
    return 0


def _trace_cohort(args: argparse.Namespace) -> int:
    from medloop.plugins.axons.batch import trace_cohort
    from medloop.plugins.axons.tracker import load_tracker

    if args.output.suffix.lower() == ".swc":
        raise MedloopError(f"{args.image} is a cohort (a folder or list of images); give -o an output folder, not the file {args.output}")
    if args.end_points:
        raise MedloopError("--end-points applies to one image; in a cohort run leave it out")
    model = str(Path(args.model).absolute()) if Path(args.model).exists() else args.model  # workers may run elsewhere
    load_tracker(model)  # a missing or damaged tracker fails here, before any case

    report = trace_cohort(args.image, args.seeds, args.output, model, _trace_params(args), progress=cohort_printer, **cohort_options(args))
    print(report.summary())
    return 2 if report.failed else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Coverage and error of each trace, and over all, printed (or as JSON)."""
    from medloop.plugins.axons.evaluation import evaluate_files

    from medloop.plugins.axons.tracker import plain_json

    result = evaluate_files(args.traces, args.truth, args.radius, args.spacing)
    if args.json:
        print(json.dumps(plain_json(result), indent=2))  # strict JSON: an error never measured is null
        return 0
    for row in result["traces"]:
        print(_metrics_line(f"trace {row['trace']} vs truth {row['truth']}", row))
    print(_metrics_line(f"all ({len(result['traces'])} traces)", result["all"]))
    return 0


def _metrics_line(label: str, m: dict[str, Any]) -> str:
    return (f"{label}: coverage {m['coverage']:.1f} % (within {m['radius']:g} px), "
            f"error {_num(m['error'], 2)} ± {_num(m['error_sd'], 2)} px, {int(m['lost'])} lost stretches")
