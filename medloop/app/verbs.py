"""What every command-line verb shares, the shell's and the plugins' alike (Qt-free): the read
options for DICOM folders, reading an image with them, and progress on a terminal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from medloop.app.errors import MedloopError


def add_read_options(parser: argparse.ArgumentParser) -> None:
    """``--series`` and ``--allow-irregular``, for verbs that read images or DICOM folders."""
    parser.add_argument("--series", metavar="S", help="DICOM folder with several series: UID, description or number")
    parser.add_argument(
        "--allow-irregular", action="store_true",
        help="DICOM series with missing slices: resample onto a regular grid instead of refusing",
    )


def read(args: argparse.Namespace, path: Path):
    """Read ``path`` with the verb's read options (plain defaults when the verb has none)."""
    from medloop.app.io.read import read_image

    return read_image(
        path, series=getattr(args, "series", None), allow_irregular=getattr(args, "allow_irregular", False)
    )


def add_cohort_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--workers N`` and ``--scheduler ADDRESS``, for verbs that run over many images."""
    parser.add_argument(
        "--workers", type=int, metavar="N",
        help=f"{prefix}run on N local worker processes (a Dask LocalCluster; default: one at a time in this process)",
    )
    parser.add_argument(
        "--scheduler", metavar="ADDRESS",
        help=f"{prefix}run on an existing Dask scheduler (tcp://host:port; e.g. dask-jobqueue on SLURM/PBS)",
    )


def cohort_options(args: argparse.Namespace) -> dict[str, Any]:
    """The cohort runner's ``scheduler``/``workers`` from ``--workers`` / ``--scheduler``."""
    if args.workers is not None and args.scheduler:
        raise MedloopError("give --workers N (local processes) or --scheduler ADDRESS (an existing cluster), not both")
    if args.workers is not None and args.workers < 1:
        raise MedloopError(f"--workers must be at least 1, got {args.workers}")
    if args.scheduler:
        return {"scheduler": args.scheduler}
    return {"scheduler": "local", "workers": args.workers} if args.workers else {}


def progress_printer(label: str) -> Callable[..., None] | None:
    """Progress on stderr for a terminal only; piped output stays clean."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int, *_):
        print(f"\r{label}: {done}/{total}", end="\n" if done >= total else "", file=sys.stderr, flush=True)

    return show


def training_printer(label: str, keys: Sequence[str] | None = None, epochs_only: bool = False) -> Callable[..., None]:
    """A training run's progress on stderr, one line per report: ``train LABEL: done/total k=v ...``
    with the numbers of the report's info (only ``keys`` when given; only epoch reports with
    ``epochs_only``)."""

    def show(done: int, total: int, info: dict | None = None) -> None:
        info = info or {}
        if epochs_only and info.get("event") != "epoch":
            return
        items = [(k, info.get(k)) for k in keys] if keys is not None else list(info.items())
        extra = " ".join(f"{k}={v:.4g}" for k, v in items if isinstance(v, (int, float)) and not isinstance(v, bool))
        print(f"train {label}: {done}/{total} {extra}", file=sys.stderr, flush=True)

    return show


def cohort_printer(done: int, total: int, info: dict) -> None:
    """A cohort run's progress: ``[done/total] case: status`` (failures, with their error, on stderr)."""
    failed = info["status"] == "failed"
    state = f"failed: {info['error']}" if failed else info["status"]
    print(f"[{done}/{total}] {info['case']}: {state}", file=sys.stderr if failed else sys.stdout, flush=True)

