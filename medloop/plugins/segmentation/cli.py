"""The segmentation plugin's verbs: ``medloop segment`` and its ``medloop train`` modes
(``--cascade-coarse`` / ``--cascade-fine``, seed 002). Errors are ``MedloopError`` subclasses,
which the shell prints as one line with exit code 2."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from medloop.app.errors import MedloopError
from medloop.app.verbs import add_cohort_options, add_read_options, cohort_options, cohort_printer, progress_printer, read


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """Add ``medloop segment``."""
    seg = sub.add_parser(
        "segment", help="segment an image (or a folder / list of images) with a model; labels keep the input's exact geometry"
    )
    seg.add_argument("input", type=Path, metavar="IN", help="image file or DICOM folder; or a folder of images or a list file (one path per line) with OUT a folder")
    seg.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="label map (.nii.gz, .nrrd, .mha, .tif); for a cohort, the output folder (<id>.nii.gz + <id>.json each)")
    seg.add_argument("--model", required=True, help="model name (see 'medloop models') or a model folder")
    seg.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    seg.add_argument("--tile", type=int, nargs="+", metavar="N", help="tile size in voxels (one value or one per axis)")
    seg.add_argument("--overlap", type=float, help="tile overlap fraction (default: the model card's)")
    seg.add_argument("--batch-size", type=int, default=2, help="tiles per forward pass")
    seg.add_argument("--threads", type=int, default=None, metavar="N",
                     help="torch CPU threads (default: every core; cohort workers: each worker's share)")
    seg.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                     help="auto (default): bf16 where the CPU/GPU runs it natively and the model's test input keeps "
                          ">= 99.9 %% of labels (checked once per model and machine); fp32; bf16")
    seg.add_argument("--probabilities", type=Path, metavar="PROBS", help="also write per-class probabilities here")
    seg.add_argument("--models-dir", type=Path, help="folder of registered models (default: your user data folder)")
    seg.add_argument("--upscale", nargs="+", metavar="AXIS=K", help="output k times finer along these axes of the image (z, y, x), e.g. z=3: segment sub-voxel shifted copies and interleave (seed 000)")
    seg.add_argument("--upscale-fusion", choices=["mean", "vote"], default="mean", help="--upscale --upscale-overlap: fuse by probability mean or majority vote")
    seg.add_argument("--upscale-overlap", action="store_true", help="--upscale: predict every fine voxel from both neighbouring coarse voxels and fuse (2x the passes per axis)")
    seg.add_argument("--upscale-align", choices=["centre", "start"], default="centre", help="--upscale: fine voxels centred in their coarse voxel (default) or starting at its centre (the paper's)")
    seg.add_argument("--upscale-order", type=int, choices=[1, 3], default=3, help="--upscale: image interpolation of the shifted copies (3 cubic B-spline, 1 linear)")
    seg.add_argument("--cascade", metavar="FINE_MODEL", help="segment-then-segment (seed 002, 2-D images): --model finds the objects on the image resized to its input size, FINE_MODEL segments a crop around each")
    seg.add_argument("--cascade-padding", type=int, metavar="K", help="--cascade: pixels added around each object's box (default: input size / 8)")
    add_read_options(seg)
    add_cohort_options(seg, "cohort: ")
    seg.set_defaults(handler=cmd_segment)


def _params(args: argparse.Namespace, ndim: int):
    from medloop.plugins.segmentation.method import SegmentParams
    from medloop.plugins.segmentation.upscale import parse_factors

    tile = tuple(args.tile) * (ndim if len(args.tile) == 1 else 1) if args.tile else None
    factors = parse_factors(args.upscale, ndim) if args.upscale else None
    if args.cascade_padding is not None and not args.cascade:
        raise MedloopError("--cascade-padding needs --cascade FINE_MODEL; add it or leave the padding out")
    return SegmentParams(
        model=args.model, device=args.device, roi_size=tile, overlap=args.overlap, batch_size=args.batch_size,
        probabilities=args.probabilities is not None, models_dir=args.models_dir, upscale=factors,
        upscale_align=args.upscale_align, upscale_overlap=args.upscale_overlap, upscale_fusion=args.upscale_fusion,
        upscale_order=args.upscale_order, cascade=args.cascade, cascade_padding=args.cascade_padding,
        num_threads=_threads(args.threads), precision=args.precision,
    )


def _threads(n: int | None) -> int | None:
    if n is not None and n < 1:
        raise MedloopError(f"--threads must be at least 1, got {n}")
    return n


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment one image (or slide) and print the per-class volumes."""
    from medloop.app.io.write import write_image
    from medloop.plugins.segmentation.method import segment

    if _is_cohort(args):
        return _segment_cohort(args)
    image = read(args, args.input)
    params = _params(args, image.ndim)
    if image.is_multiscale:
        return _segment_slide(args, image, params)
    result = segment(image, params, progress=progress_printer("segment"))
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
    print(f"wrote {args.output} ({result.provenance['seconds']} s on {result.provenance['device']}, {result.provenance['precision']})")
    return 0


def _is_cohort(args: argparse.Namespace) -> bool:
    """A folder of images or a list file in, a folder out (a DICOM series folder with an image
    file out stays one image); ``--workers``/``--scheduler`` always mean a cohort."""
    from medloop.app.io.read import suffix_of, supported_suffixes

    if args.workers is not None or args.scheduler:
        return True
    out_is_image = suffix_of(args.output) in supported_suffixes()
    if args.input.is_dir():
        return not out_is_image
    return args.input.is_file() and suffix_of(args.input) not in supported_suffixes()


def _segment_cohort(args: argparse.Namespace) -> int:
    """Every image of a folder or list file into the output folder; one line per case."""
    from medloop.app.io.read import suffix_of, supported_suffixes
    from medloop.plugins.segmentation.batch import segment_cohort

    if suffix_of(args.output) in supported_suffixes():
        raise MedloopError(f"{args.input} is a cohort (a folder or list of images); give -o an output folder, not the image file {args.output}")
    if args.probabilities is not None:
        raise MedloopError("--probabilities names one file; in a cohort run leave it out (each case writes <id>.nii.gz)")
    if args.series is not None or args.allow_irregular:
        raise MedloopError("--series and --allow-irregular apply to one DICOM folder; segment its series one at a time")
    if args.tile or args.upscale:
        raise MedloopError("--tile and --upscale depend on each image's dimensions; in a cohort run leave them out (the model card's tile is used)")
    params = _params(args, 3)

    report = segment_cohort(args.input, args.output, params, progress=cohort_printer, **cohort_options(args))
    print(report.summary())
    return 2 if report.failed else 0


def _segment_slide(args: argparse.Namespace, image, params) -> int:
    from medloop.plugins.segmentation.method import segment_slide_file

    if params.upscale and any(k > 1 for k in params.upscale):
        raise MedloopError(f"--upscale works on volumes and 2-D images, not on the slide {args.input}; leave it out")
    if args.cascade:
        raise MedloopError(f"--cascade works on 2-D images, not on the slide {args.input}; leave it out")
    prov = segment_slide_file(image, params, args.output, progress=progress_printer("segment"))
    print(f"wrote {args.output} ({prov['seconds']} s on {prov['device']}, {prov['precision']})")
    return 0


class CascadeTraining:
    """``medloop train --cascade-coarse | --cascade-fine``: a cascade's two models (seed 002)."""

    def add_options(self, train: argparse.ArgumentParser) -> None:
        train.add_argument("--cascade-coarse", action="store_true", help="train the coarse model of a segment-then-segment cascade from --model's weights on whole --images resized to --input-size")
        train.add_argument("--input-size", type=int, metavar="S", help="--cascade-coarse: the input size S (default: --model's)")
        train.add_argument("--coarse-target", choices=["any", "area"], default="any",
                           help="--cascade-coarse: masks at S keep every object ('any', default) or are resized by area (the paper's)")
        train.add_argument("--cascade-fine", action="store_true", help="train the fine model of a segment-then-segment cascade from --model (the coarse model) on ground-truth crops of --images/--masks")
        train.add_argument("--images", type=Path, nargs="+", default=[], metavar="IMG", help="--cascade-coarse/--cascade-fine: training images")
        train.add_argument("--masks", type=Path, nargs="+", default=[], metavar="MASK", help="--cascade-coarse/--cascade-fine: their label maps, same order")
        train.add_argument("--name", help="--cascade-coarse/--cascade-fine: the new model's name (default: MODEL-coarse / MODEL-fine)")

    def run(self, args: argparse.Namespace) -> int | None:
        if not (args.cascade_coarse or args.cascade_fine):
            return None
        from medloop.plugins.segmentation.cascade_cli import train_cascade_model

        return train_cascade_model(args, lambda path: read(argparse.Namespace(), path))


TRAINING = CascadeTraining()
