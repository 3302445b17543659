"""`medloop review …`: create a review project, list its cases, record decisions, export, report.

Declared in the plugin's registration (``cli``) and found by the shell; errors
are ``MedloopError`` subclasses, which the main CLI prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medloop.app.verbs import add_cohort_options, cohort_options
from medloop.plugins.review.project import (
    ACTIONS,
    CaseInput,
    ReviewError,
    ReviewProject,
    default_reviewer,
)


def add_verbs(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``review`` command (and its actions) to the CLI's subparsers."""
    review = subparsers.add_parser("review", help="review model predictions: create a project, export, report")
    parser_class = type(review)  # the main CLI's one-line-error parser
    sub = review.add_subparsers(dest="review_command", metavar="ACTION", parser_class=parser_class)

    init = sub.add_parser("init", help="create a review project from images and predictions, or by running a model")
    init.add_argument("dir", type=Path, metavar="DIR", help="project folder (created; must not be a project already)")
    init.add_argument("--images", type=Path, nargs="+", required=True, metavar="IMG", help="one image per case")
    init.add_argument(
        "--predictions", type=Path, nargs="+", action="append", metavar="MASK",
        help="one label map per image, same order; repeat the option for a second model's predictions",
    )
    init.add_argument("--references", type=Path, nargs="+", metavar="MASK", help="reference masks, one per image")
    init.add_argument("--probabilities", type=Path, nargs="+", metavar="PROBS",
                      help="per-class probabilities of the first predictions (for the uncertainty order)")
    init.add_argument("--ids", nargs="+", metavar="ID", help="case ids, one per image (default: the image file names)")
    init.add_argument("--model", help="run this model over the images instead of --predictions")
    init.add_argument("--flips", action="store_true", help="--model: also score disagreement on mirrored inputs (3x slower)")
    init.add_argument("--device", default="auto", help="--model: auto, cpu, cuda, cuda:N, mps")
    init.add_argument("--models-dir", type=Path, help="--model: folder of registered models")
    add_cohort_options(init, "--model: ")
    init.add_argument("--prediction-model", metavar="NAME", help="name of the model that made --predictions (for the audit log)")
    init.add_argument("--prediction-model-version", metavar="V", help="its version")
    init.add_argument("--prediction-weights-sha256", metavar="SHA", help="its weights' sha256")

    status = sub.add_parser("status", help="list the cases, most uncertain first, with their status")
    status.add_argument("dir", type=Path, metavar="DIR")
    status.add_argument("--sort", choices=["uncertainty", "status", "id"], default="uncertainty")
    status.add_argument("--json", action="store_true", help="print machine-readable JSON")

    decide = sub.add_parser("decide", help="record a decision on a case (the GUI does this as you review)")
    decide.add_argument("dir", type=Path, metavar="DIR")
    decide.add_argument("case", metavar="CASE")
    decide.add_argument("action", choices=list(ACTIONS), metavar="ACTION", help=", ".join(ACTIONS))
    decide.add_argument("--reviewer", help="your name (default: $MEDLOOP_REVIEWER or your login name)")
    decide.add_argument("--mask", type=Path, help="edit: the edited label map (on the case's image grid)")
    decide.add_argument("--comment", default="")
    decide.add_argument("--seconds", type=float, help="time spent on the case")

    export = sub.add_parser("export", help="write reviewed masks with the source images' geometry")
    export.add_argument("dir", type=Path, metavar="DIR")
    export.add_argument("out", type=Path, metavar="OUT", help="output folder")
    export.add_argument("--accepted-only", action="store_true", help="only cases accepted or edited")
    export.add_argument("--reviewer", help="use this reviewer's decisions (default: the case status, latest verdict)")

    report = sub.add_parser("report", help="write a CSV and an HTML summary of the review")
    report.add_argument("dir", type=Path, metavar="DIR")
    report.add_argument("-o", "--output", type=Path, metavar="OUT", help="output folder (default: DIR/report)")
    report.add_argument("--no-thumbnails", action="store_true", help="leave the slice pictures out (faster)")
    review.set_defaults(handler=cmd_review)
    return review


def cmd_review(args: argparse.Namespace) -> int:
    """Run a ``review`` action; returns the exit code (errors raise MedloopError)."""
    action = getattr(args, "review_command", None)
    if action is None:
        raise ReviewError("review needs an action: init, status, decide, export or report (see 'medloop review --help')")
    return {"init": _init, "status": _status, "decide": _decide, "export": _export, "report": _report}[action](args)


def _init(args: argparse.Namespace) -> int:
    n = len(args.images)
    args.predictions = args.predictions or []
    if args.ids is not None and len(args.ids) != n:
        raise ReviewError(f"{len(args.ids)} --ids for {n} images; give one id per image")
    if args.model:
        if args.predictions or args.probabilities:
            raise ReviewError("give either --model (run it) or --predictions (existing masks), not both")
        project = ReviewProject.create_with_model(
            args.dir, args.images, args.model, references=args.references, ids=args.ids, device=args.device,
            models_dir=args.models_dir, flips=args.flips, **cohort_options(args),
        )
    else:
        if not args.predictions:
            raise ReviewError(f"review init {args.dir} needs --predictions (one per image) or --model NAME")
        for name, group in [*(("--predictions", g) for g in args.predictions), ("--references", args.references),
                            ("--probabilities", args.probabilities)]:
            if group is not None and len(group) != n:
                raise ReviewError(f"{len(group)} {name} for {n} --images; give one per image, in the same order")
        model = {"model": args.prediction_model, "model_version": args.prediction_model_version,
                 "weights_sha256": args.prediction_weights_sha256}
        specs = [
            CaseInput(
                image=img,
                predictions=[g[i] for g in args.predictions],
                reference=args.references[i] if args.references else None,
                probabilities=args.probabilities[i] if args.probabilities else None,
                id=args.ids[i] if args.ids else None,
                model=model,
            )
            for i, img in enumerate(args.images)
        ]
        project = ReviewProject.create(args.dir, specs)
    print(f"created review project {args.dir} with {len(project.cases)} cases")
    return 0


def _status(args: argparse.Namespace) -> int:
    project = ReviewProject.open(args.dir)
    state = project.state()
    rows = []
    for case in project.cases_sorted(args.sort, state):
        st = state.cases[case.id]
        rows.append({"case": case.id, "status": st.status, "uncertainty": case.uncertainty_score,
                     "reviewers": sorted(st.reviews)})
    if args.json:
        print(json.dumps({"cases": rows, "counts": state.counts(), "log_problems": len(state.problems)}, indent=2))
    else:
        for r in rows:
            u = "-" if r["uncertainty"] is None else f"{r['uncertainty']:.3f}"
            print(f"{r['case']}\t{r['status']}\tuncertainty {u}\t{' '.join(r['reviewers'])}")
    return 0


def _decide(args: argparse.Namespace) -> int:
    project = ReviewProject.open(args.dir)
    reviewer = args.reviewer or default_reviewer()
    mask = None
    if args.mask is not None:
        from medloop.app.io.read import read_image
        from medloop.app.io.validate import check_same_grid

        labels = read_image(args.mask)
        check_same_grid(project.load_image(args.case), labels)
        mask = labels.array
    d = project.decide(args.case, reviewer, args.action, mask=mask, seconds=args.seconds, comment=args.comment)
    print(f"{d.case}: {d.action} by {d.reviewer} at {d.time}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from medloop.plugins.review.export import export_masks

    rows = export_masks(ReviewProject.open(args.dir), args.out, accepted_only=args.accepted_only, reviewer=args.reviewer)
    done = sum(r.path is not None for r in rows)
    print(f"exported {done} of {len(rows)} cases to {args.out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from medloop.plugins.review.report import write_report

    files = write_report(ReviewProject.open(args.dir), args.output, thumbnails=not args.no_thumbnails)
    print(f"wrote {files.csv} and {files.html}")
    return 0
add_review_parser = add_verbs  # the name this function had before the plugin registry
