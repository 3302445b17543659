"""Fine-tune a tracker on the user's images and their true centrelines (SWC), the paper's
fine-tune mode: ``medloop axons train --images ... --traces ... --out DIR [--model NAME]``.

Every path of every SWC file becomes one (image, path) pair; episodes start at either end of a
path and are rewarded along it. Validation runs on the training pairs (the user's few images are
all there is), the best state is kept, and DIR gets ``actor.pt`` + ``card.json`` (its parent: the
starting tracker's name and weights sha256).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medloop.plugins.axons.checks import TracingInputError, check_pairs, check_positive

FINE_TUNE_ITERATIONS = 40


def read_pairs(images: list[Path], traces: list[Path]) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """(images, paths, labels): one entry per SWC path, in pixels (the SWC's voxel separation, else
    its image's spacing, else pixels)."""
    from medloop.app.io.read import read_image
    from medloop.plugins.axons.batch import image_geometry
    from medloop.plugins.axons.swc import read_swc

    if not images:
        raise TracingInputError("no training images given; give --images IMG... with --traces SWC... (one SWC per image)")
    if len(images) != len(traces):
        raise TracingInputError(f"{len(images)} images but {len(traces)} SWC files; give one --traces file per --images file, same order")
    arrays, paths, labels = [], [], []
    for image_path, swc_path in zip(images, traces):
        image = read_image(image_path)
        swc = read_swc(swc_path)
        spacing, _ = image_geometry(image)
        if swc.header_spacing is None and spacing is not None:
            swc = read_swc(swc_path, spacing)  # no header: the file is in its image's units
        for k, path in enumerate(swc.paths):
            arrays.append(np.asarray(image.array))
            paths.append(path)
            labels.append(f"{swc_path.name}#{k + 1}")
    return arrays, paths, labels


def _val_every(iterations: int) -> int:
    return next(d for d in (10, 5, 4, 2, 1) if d <= iterations and iterations % d == 0)


def fine_tune_config(iterations: int, episodes: int, seed: int, max_steps: int) -> Any:
    """The fine-tune run's :class:`~.ppo.TrackerConfig`."""
    from medloop.plugins.axons.env import EnvConfig
    from medloop.plugins.axons.ppo import TrackerConfig

    check_positive(iterations=iterations, episodes=episodes, max_steps=max_steps)
    return TrackerConfig(iterations=iterations, episodes=episodes, seed=seed, val_every=_val_every(iterations),
                         env=EnvConfig(max_steps=max_steps))


def fine_tune_files(args: argparse.Namespace, progress: Callable[..., None] | None = None) -> Path:
    """Run the fine-tune the CLI arguments describe; the new card's path."""
    from medloop.models.card import write_card
    from medloop.plugins.axons.geometry import arc_length
    from medloop.plugins.axons.ppo import train_tracker
    from medloop.plugins.axons.tracker import (
        CARD_FILE, CHECKPOINT_FILE, DEFAULT_TRACKER, WEIGHTS_FILE, load_tracker, save_half, tracker_card, training_record,
    )

    images, paths, labels = read_pairs(args.images, args.traces)
    check_pairs(images, paths)  # every bad pair refused before the tracker loads
    base = load_tracker(args.model or DEFAULT_TRACKER)
    longest = max(float(arc_length(p)[-1]) for p in paths)
    config = fine_tune_config(args.iterations or FINE_TUNE_ITERATIONS, args.episodes, args.seed,
                              args.max_steps or max(60, math.ceil(longest)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = train_tracker(config, progress, pairs=(images, paths), actor=base.actor,
                           checkpoint=out / CHECKPOINT_FILE, resume=args.resume)
    seconds = time.perf_counter() - started
    weights = save_half(result.actor, out / WEIGHTS_FILE, config.as_dict())
    name = args.name or f"{base.name}-finetuned"
    training = {"fine_tune": {"images": [str(p) for p in args.images], "traces": labels, "config": config.as_dict()},
                "command": "medloop axons train --images ... --traces ... --out DIR", **training_record(result, config, seconds)}
    card = tracker_card(name, "1", f"{base.name} fine-tuned on {len(paths)} user traces ({len(args.images)} images).",
                        weights, training, {}, parent={"name": base.name, "weights_sha256": base.sha256})
    return write_card(card, out / CARD_FILE)
