"""Simulated annotator on the packaged sample's real anatomy (issue #18 §4): does "where to paint
next" beat painting at random, and how close do sparse strokes from scratch get to dense labels?

Data: the MNI152 2 mm T1 and its tissue labels (packaged sample), normalised as the packaged
``brain-tissue`` card says; 16 axial training slices and 10 held-out test slices: ``--split far``
(default; z = 14, 16, ..., 44 and 52, ..., 70: at least 8 slices from any training slice, other
anatomy) or ``--split interleaved`` (z = 14, 18, ..., 74 and 16, 22, ..., 70: 2 slices away). Model: the ``brain-tissue``
architecture (2-D U-Net 16-128, BatchNorm) from random weights (seeded), trained through
``retrain.fine_tune`` (the Correction panel's and ``medloop train --weak strokes``'s code path).

* start: random-walk strokes (``weaklabels.strokes``, 3 px wide, margin 1) of grey matter, white
  matter and background, background only within 6 px of the brain (as annotators paint it),
  ~3.6 % of the training slices' pixels; 60 epochs without early stop (the best validated
  epoch kept: converged, so that the rounds measure the strokes, not more training).
* each round the simulated annotator paints one short stroke (at most 0.2 % of the training
  pixels, and a quarter of the region) of the true class that the model gets most wrong in a
  region; then the model
  fine-tunes from the previous round's weights on all strokes so far (10 epochs).
  * ``guided``: the region is the top suggestion of ``guidance.suggest`` (with the strokes' pixel
    classifier); a region that offers nothing to paint passes to the next suggestion.
  * ``random``: a 32 px region centred on a random pixel within 6 px of the brain.
* ``dense``: the 16 training slices fully labelled (the reference; the start's 60 epochs).
* the unannotated options: the start with ``unannotated`` off / select / pseudo at the
  panel's defaults (20 epochs, early stop after 3 epochs without gain).

Reported: held-out mean grey/white Dice per round (median of the seeds, with min-max), the
annotated share of the training pixels and the ratio to dense.

    python benchmarks/bench_annotation_loop.py                 # 3 seeds, 5 rounds, all arms (~30 min, 2 cores)
    python benchmarks/bench_annotation_loop.py --seeds 0 --rounds 2 --no-effect   # quick look
    python benchmarks/bench_annotation_loop.py --split interleaved --no-effect    # test slices near training ones
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: (training slices, held-out test slices): "far" tests other anatomy (the upper brain, >= 8
#: slices from any training slice: extrapolation); "interleaved" spans the brain, each test slice
#: 2 slices (4 mm) from a training one (the same anatomy, unseen slices).
SPLITS = {
    "far": (list(range(14, 46, 2)), list(range(52, 72, 2))),
    "interleaved": (list(range(14, 78, 4)), list(range(16, 76, 6))),
}
NEAR_PX = 6
START_COVERAGE = 0.037
STROKE_SHARE = 0.002
REGION = 32
START_EPOCHS = 60


def load():
    from medloop.app.engine.resample import normalise
    from medloop.app.samples import load_brain_sample
    from medloop.models.registry import get_model

    entry = get_model("brain-tissue")
    t1, tissue = load_brain_sample()
    vol = normalise(np.asarray(t1.array), entry.card.normalisation).astype(np.float32)
    return entry, vol, np.asarray(tissue.array).astype(np.int64)


def near_strokes(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Start strokes: every class, background only near the brain (paint convention)."""
    from scipy import ndimage

    from medloop.plugins.correction.weaklabels import strokes

    far = ~ndimage.binary_dilation(truth > 0, iterations=NEAR_PX)
    masked = np.where(far, 3, truth)
    s, _ = strokes(masked, coverage=START_COVERAGE, margin=1, per_class_counts={0: 1, 1: 1, 2: 1, 3: 0}, rng=rng, width=3)
    return np.where(s == 4, 0, s).astype(np.int64)


def paint(truth: np.ndarray, pred: np.ndarray, strokes: np.ndarray, box, budget: int, rng) -> int:
    """One stroke of the class the model gets most wrong in ``box`` (through the region)."""
    from medloop.plugins.correction.weaklabels import strokes as walk

    y0, x0, y1, x1 = box
    t, p, s = truth[y0:y1, x0:x1], pred[y0:y1, x0:x1], strokes[y0:y1, x0:x1]
    wrong = np.bincount(t[(p != t) & (s == 0)], minlength=3)
    cls = int(wrong.argmax()) if wrong.any() else int(np.bincount(t[s == 0], minlength=3).argmax()) if (s == 0).any() else 0
    room = (t == cls) & (s == 0)
    if not room.any():
        return 0
    want = min(budget, room.size // 4)
    drawn, _ = walk(np.where(room, 0, 1), coverage=min(0.5, want / room.size), margin=0,
                    per_class_counts={0: 1, 1: 0}, rng=rng, width=1)
    new = (drawn == 1) & room
    if new.sum() > want:  # keep the stroke's first ``want`` pixels in raster order (a shorter stroke)
        keep = np.flatnonzero(new.ravel())[:want]
        new = np.zeros_like(new)
        new.ravel()[keep] = True
    s[new] = cls + 1
    return int(new.sum())


def held_out_dice(net, vol, lab, test: list[int]) -> float:
    from medloop.app.engine.metrics import dice_per_class
    from medloop.plugins.correction.weak_kit import predict_labels

    preds = [predict_labels(net, vol[z][None]) for z in test]
    d = dice_per_class(np.concatenate([p.ravel() for p in preds]), np.concatenate([lab[z].ravel() for z in test]), 3, False)
    return float((d[1] + d[2]) / 2)


def fresh(entry, seed: int):
    import torch

    from medloop.models.nets import build_network

    torch.manual_seed(seed)
    arch, kwargs = entry.card.architecture
    return build_network(arch, **kwargs)


def train(net, x, strokes, seed: int, epochs: int, unannotated: str, patience: int | None = 3):
    from medloop.plugins.correction import retrain

    # From scratch: BatchNorm learns its statistics (the panel freezes them to fine-tune a trained model).
    config = retrain.default_fine_tune_config(freeze_norm_stats=False, epochs=epochs, early_stop_patience=patience)
    pairs = [(x[:, i], strokes[i]) for i in range(strokes.shape[0]) if strokes[i].any()]
    return retrain.fine_tune(net, pairs, config, seed=seed, unannotated=unannotated, anchor=0.0).network


def next_box(arm: str, net, x, strokes, truth, near, rng, tried: int):
    from medloop.plugins.correction import guidance
    from medloop.plugins.correction.pixel_teacher import fit_pixel_teacher

    if arm == "guided":
        teacher = fit_pixel_teacher([(x[:, i], strokes[i]) for i in range(strokes.shape[0])], 3, seed=0)
        suggestions, _, labels = guidance.suggest(net, x, strokes, n=tried + 1, teacher=teacher, region=REGION)
        s = suggestions[tried]
        return s.slice, s.box, labels
    from medloop.plugins.correction.weak_kit import predict_on_grid

    zs, ys, xs = np.nonzero(near)
    i = int(rng.integers(len(zs)))
    h = REGION // 2
    box = (max(0, ys[i] - h), max(0, xs[i] - h), min(truth.shape[1], ys[i] + h), min(truth.shape[2], xs[i] + h))
    return int(zs[i]), box, predict_on_grid(net, x)


def run_arm(arm: str, seed: int, rounds: int, unannotated: str, start_epochs: int = START_EPOCHS, split: str = "far") -> dict:
    from scipy import ndimage

    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    entry, vol, lab = load()
    rng = np.random.default_rng(seed)
    train_z, test_z = SPLITS[split]
    x, truth = vol[train_z][None], lab[train_z]
    t0 = time.perf_counter()
    if arm == "dense":
        net = train(fresh(entry, seed), x, truth + 1, seed, START_EPOCHS, "off", patience=None)  # the same budget
        return {"arm": arm, "seed": seed, "dice": [held_out_dice(net, vol, lab, test_z)], "annotated": [1.0], "seconds": time.perf_counter() - t0}
    s = np.stack([near_strokes(t, rng) for t in truth])
    # The start trains to convergence (no early stop), so that the rounds measure the strokes,
    # not more epochs; the panel's default (20 epochs, early stop) is the --effect table's.
    net = train(fresh(entry, seed), x, s, seed, start_epochs, unannotated, patience=None if start_epochs > 20 else 3)
    dice, annotated, painted_at = [held_out_dice(net, vol, lab, test_z)], [float((s > 0).mean())], []
    near = np.stack([ndimage.binary_dilation(t > 0, iterations=NEAR_PX) for t in truth])
    budget = int(STROKE_SHARE * s.size)
    for _ in range(rounds):
        for tried in range(10):
            z, box, labels = next_box(arm, net, x, s, truth, near, rng, tried)
            n = paint(truth[z], labels[z], s[z], box, budget, rng)
            if n:
                painted_at.append([int(z), [int(v) for v in box], n])
                break
        net = train(net, x, s, seed, 10, unannotated)
        dice.append(held_out_dice(net, vol, lab, test_z))
        annotated.append(float((s > 0).mean()))
    return {"arm": arm, "seed": seed, "dice": dice, "annotated": annotated, "painted": painted_at, "seconds": time.perf_counter() - t0}


def run_effect(seed: int, unannotated: str, split: str = "far") -> dict:
    out = run_arm("random", seed, 0, unannotated, start_epochs=20, split=split)
    return {**out, "arm": f"round 0, unannotated={unannotated}"}


def summarise(results: list[dict]) -> list[str]:
    by_arm: dict[str, list[dict]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], []).append(r)
    dense = np.median([r["dice"][0] for r in by_arm.get("dense", [])]) if "dense" in by_arm else float("nan")
    lines = [f"dense (16 slices fully labelled): held-out Dice median {dense:.3f}"]
    for arm, rs in by_arm.items():
        if arm == "dense":
            continue
        d = np.array([r["dice"] for r in rs])
        a = np.array([r["annotated"] for r in rs])
        cells = [
            f"r{i}: {np.median(d[:, i]):.3f} [{d[:, i].min():.3f}-{d[:, i].max():.3f}] {np.median(d[:, i]) / dense:.2f}x {100 * np.median(a[:, i]):.2f}%"
            for i in range(d.shape[1])
        ]
        lines.append(f"{arm} ({len(rs)} seeds): " + " | ".join(cells))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--unannotated", default="pseudo", choices=["off", "select", "pseudo"])
    ap.add_argument("--no-effect", action="store_true", help="skip the round-0 comparison of the unannotated options")
    ap.add_argument("--split", default="far", choices=sorted(SPLITS), help="far: test slices >= 8 slices from training ones; interleaved: 2")
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1)))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    tasks = [("dense", s, 0, "off", START_EPOCHS, args.split) for s in args.seeds]
    tasks += [(arm, s, args.rounds, args.unannotated, START_EPOCHS, args.split) for arm in ("guided", "random") for s in args.seeds]
    effect = [] if args.no_effect else [(s, u, args.split) for u in ("off", "select", "pseudo") for s in args.seeds]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_arm, *t) for t in tasks] + [pool.submit(run_effect, *e) for e in effect]
        results = [f.result() for f in futures]
    for line in summarise(results):
        print(line)
    print(f"total {time.perf_counter() - t0:.0f} s on {args.jobs} processes (1 torch thread each)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
