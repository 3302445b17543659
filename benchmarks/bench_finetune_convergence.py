"""How long a full stroke fine-tune takes to converge: wall time until the test Dice first reaches
0.95 x its final value (the issue's "full fine-tune time to reach 0.95x of its final Dice").

``retrain.fine_tune`` runs exactly as the Correction panel runs it (``default_fine_tune_config``:
20 epochs x 20 steps, batch 4, Adam 1e-3, balanced stroke loss "mini-batch", 20 % of the stroke
components held out to validate, best-validated weights kept, early stop after 3 validations
without gain, 1 thread) on one image's strokes, drawn from its dense truth with
``weaklabels.strokes`` (coverage 5 %, seeded). A progress callback records, every ``--every``
steps (default 5; an epoch is 20 steps) and at each epoch end, the training wall time (our
evaluation time subtracted) and the test Dice of the weights just trained against the dense truth
of the annotated image and of held-out images, plus the per-epoch stroke validation Dice.
"final" = the model fine_tune returns (its best validated epoch). Scenarios:

* ``brain``: the packaged ``brain-tissue-t1`` model (2-D U-Net 16-128, GroupNorm, trained on
  axial slices of the MNI152 2 mm T1) on a slice along another array axis (``--axis 2``,
  ``--position 0.53``: mean grey/white Dice ~0.84 before fine-tuning); margin 1 px, as the cortex
  is 1-3 voxels thick at 2 mm; held-out = the slices ``--offset`` away on both sides. Dice = mean
  of grey and white matter.
* ``brain-dense``: the same with the slice's whole truth as the annotation (the panel's other
  flow: correct the prediction everywhere, retrain); the held-out share is then whole connected
  regions of a class.
* ``mosaic``: generator (a) texture mosaic (K = 4), the spec's tiny U-Net from a seeded random
  start, strokes (margin 3, skewed per-class counts as in bench_weak_supervision) on one image,
  8 held-out images. Dice = mean over the 4 classes.

    python benchmarks/bench_finetune_convergence.py               # all three, 3 seeds
    python benchmarks/bench_finetune_convergence.py --quick       # 1 seed, 6 epochs
    python benchmarks/bench_finetune_convergence.py --scenario brain --json /tmp/ft.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


SCENARIOS = ("brain", "brain-dense", "mosaic")


def median(values) -> float:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.median(v)) if v else float("nan")


def mean_dice(net, items, classes=(1, 2), k: int = 3) -> float:
    """Mean Dice over ``classes`` of whole-image predictions, voxels of all ``items`` pooled."""
    from medloop.app.engine.metrics import dice_per_class
    from medloop.plugins.correction.headless import predict_labels

    preds = [predict_labels(net, x).ravel() for x, _ in items]
    truth = np.concatenate([y.ravel() for _, y in items])
    d = dice_per_class(np.concatenate(preds), truth, k, False)
    return float(np.mean([d[c] for c in classes]))


def load_brain(axis: int, position: float, offset: int, seed: int, dense: bool = False):
    """brain-tissue-t1, the slice at ``position`` along ``axis`` (+ held-out slices), its strokes
    (``dense``: the whole truth as the annotation, as after correcting the full prediction)."""
    from medloop.app.engine.resample import normalise
    from medloop.app.samples import load_brain_sample
    from medloop.models.registry import build_model, get_model
    from medloop.plugins.correction.weaklabels import strokes

    entry = get_model("brain-tissue-t1")
    t1, tissue = load_brain_sample()
    vol = normalise(np.asarray(t1.array), entry.card.normalisation).astype(np.float32)
    lab = np.asarray(tissue.array).astype(np.int64)
    i = round((vol.shape[axis] - 1) * position)

    def take(k: int):
        return np.ascontiguousarray(np.take(vol, k, axis=axis)[None]), np.take(lab, k, axis=axis)

    x, truth = take(i)
    if dense:
        s, coverage = truth + 1, 1.0
    else:
        s, coverage = strokes(truth, coverage=0.05, margin=1, rng=seed)  # 2 mm voxels: cortex is thin
    what = f"brain-tissue-t1, slice {i} along array axis {axis} {truth.shape}" + (", dense annotation" if dense else "")
    return what, build_model(entry), x, truth, s, coverage, [take(i - offset), take(i + offset)], (1, 2), 3


def load_mosaic(seed: int, n_held_out: int = 8):
    """Generator (a) mosaic (K = 4), the spec's tiny U-Net from a seeded random start, strokes on
    one image (skewed per-class counts as in bench_weak_supervision), other images held out."""
    import torch
    from bench_weak_supervision import K_MOSAIC, STROKE_COUNTS, tiny_unet

    from medloop.plugins.correction.synth import dataset
    from medloop.plugins.correction.weaklabels import strokes

    items = dataset("mosaic", 1 + n_held_out, seed=5000 + seed, num_classes=K_MOSAIC)
    s, coverage = strokes(items[0].semantic, coverage=0.05, margin=3, per_class_counts=STROKE_COUNTS, rng=seed)
    torch.manual_seed(seed)
    net = tiny_unet(items[0].image.shape[0], K_MOSAIC)
    held = [(i.image, i.semantic) for i in items[1:]]
    what = f"mosaic K={K_MOSAIC}, tiny U-Net (random start), {items[0].semantic.shape}"
    return what, net, items[0].image, items[0].semantic, s, coverage, held, tuple(range(K_MOSAIC)), K_MOSAIC


def run(scenario: tuple, seed: int, epochs: int | None, every: int, log, anchor: float | None = None, lr: float | None = None) -> dict:
    import torch

    from medloop.plugins.correction.retrain import default_fine_tune_config, fine_tune

    what, net, x, truth, s, coverage, held_out, classes, k = scenario

    def score(model, items) -> float:
        return mean_dice(model, items, classes, k)

    start_same, start_held = score(net, [(x, truth)]), score(net, held_out)

    holder: dict = {}
    # fine_tune trains a deep copy; a forward hook is copied with it and hands us the copy.
    handle = net.register_forward_hook(lambda module, inputs, output: holder.__setitem__("model", module))
    curve: list[dict] = [{"epoch": 0, "seconds": 0.0, "steps": 0, "val_dice": None, "test_dice": start_same,
                          "held_out_dice": start_held, "train_loss": None}]
    clock = {"t0": time.perf_counter(), "eval": 0.0}

    def evaluate(done: int, epoch: int) -> None:
        t_train = time.perf_counter() - clock["t0"] - clock["eval"]
        t = time.perf_counter()
        model = holder["model"]
        was = model.training
        with torch.inference_mode():
            same, held = score(model, [(x, truth)]), score(model, held_out)
        model.train(was)
        clock["eval"] += time.perf_counter() - t
        curve.append({"epoch": epoch, "seconds": t_train, "steps": done, "val_dice": None, "test_dice": same,
                      "held_out_dice": held, "train_loss": None})

    def progress(done: int, total: int, info: dict) -> None:
        if info.get("event") == "epoch":  # after this epoch's validation; the step event came first
            curve[-1]["val_dice"], curve[-1]["train_loss"] = info.get("val_mean_dice"), info["train_loss"]
        elif done % every == 0 or info["step"] == cfg.steps_per_epoch:
            evaluate(done, info["epoch"])

    cfg = default_fine_tune_config() if epochs is None else default_fine_tune_config(epochs=epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if lr is not None:
            from dataclasses import replace

            cfg = replace(cfg, lr=lr)
        extra = {} if anchor is None else {"anchor": anchor}
        result = fine_tune(net, [(x, s)], cfg, mode="mini-batch", progress=progress, seed=seed, **extra)
    handle.remove()
    total_train = time.perf_counter() - clock["t0"] - clock["eval"]
    final_same, final_held = score(result.network, [(x, truth)]), score(result.network, held_out)
    target = 0.95 * final_same
    reach = next((c for c in curve if c["test_dice"] >= target), None)
    target_h = 0.95 * final_held
    reach_h = next((c for c in curve if c["held_out_dice"] >= target_h), None)
    log(f"  [seed {seed}] {what}, stroke coverage {coverage:.3f}; "
        f"start Dice {start_same:.3f} (held-out slices {start_held:.3f})")
    for c in curve:
        if c["steps"] and c["train_loss"] is None and c is not reach and c is not reach_h:
            continue  # print epoch ends and the points where 0.95 x final is first reached
        val = "  n/a" if c["val_dice"] is None else f"{c['val_dice']:.3f}"
        loss = "  n/a" if c["train_loss"] is None else f"{c['train_loss']:.3f}"
        log(f"    epoch {c['epoch']:2d}  step {c['steps']:3d}  {c['seconds']:6.1f} s  loss {loss}  "
            f"val {val}  test {c['test_dice']:.3f}  held-out {c['held_out_dice']:.3f}")
    log(f"  [seed {seed}] final (best epoch {result.train.best_epoch}, {result.train.epochs_done} epochs, "
        f"early stop {result.early_stopped}): test {final_same:.3f}, held-out {final_held:.3f}; "
        f"fine_tune {result.seconds:.1f} s incl. our per-epoch evaluation, {total_train:.1f} s without")
    def when(c: dict | None) -> str:
        if c is None:
            return "never"
        return "at the start (step 0)" if c["steps"] == 0 else f"step {c['steps']} (epoch {c['epoch']}), {c['seconds']:.1f} s"

    log(f"  [seed {seed}] 0.95 x final test Dice ({target:.3f}) first reached {when(reach)}; "
        f"held-out ({target_h:.3f}) {when(reach_h)}; evaluated every {every} steps")
    return {
        "seed": seed, "scenario": what, "coverage": coverage, "start_test": start_same, "start_held_out": start_held,
        "final_test": final_same, "final_held_out": final_held, "best_epoch": result.train.best_epoch,
        "epochs_done": result.train.epochs_done, "train_seconds": total_train,
        "t95_test": reach["seconds"] if reach else None, "steps95_test": reach["steps"] if reach else None,
        "t95_held_out": reach_h["seconds"] if reach_h else None, "curve": curve,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 6 epochs")
    ap.add_argument("--seeds", type=int, default=None, help="stroke seeds (default 3, 1 with --quick)")
    ap.add_argument("--epochs", type=int, default=None, help="default: the panel's (20), 6 with --quick")
    ap.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="all")
    ap.add_argument("--axis", type=int, default=2, help="brain: array axis to slice along")
    ap.add_argument("--position", type=float, default=0.53, help="brain: slice position along the axis (0-1)")
    ap.add_argument("--offset", type=int, default=6, help="brain: held-out slices this many slices away")
    ap.add_argument("--every", type=int, default=5, help="evaluate the test Dice every this many steps")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--anchor", type=float, default=None, help="fine_tune's anchor weight (default: fine_tune's default)")
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default: the panel's)")
    args = ap.parse_args(argv)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    epochs = args.epochs or (6 if args.quick else None)

    import torch

    torch.set_num_threads(1)

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(f"fine-tune convergence: torch {torch.__version__}, 1 thread, {os.cpu_count()} CPUs ({platform.machine()}), "
        f"load average at start {os.getloadavg()[0]:.2f} (other jobs share the machine)")
    out = {}
    for name in SCENARIOS if args.scenario == "all" else (args.scenario,):
        log(f"\n== {name} ==")
        runs = []
        for seed in seeds:
            if name == "mosaic":
                scenario = load_mosaic(seed)
            else:
                scenario = load_brain(args.axis, args.position, args.offset, seed, dense=name == "brain-dense")
            runs.append(run(scenario, seed, epochs, args.every, log, args.anchor, args.lr))
        log(f"median over seeds ({name}):")
        for key, what in [("start_test", "start test Dice"), ("final_test", "final test Dice"),
                          ("start_held_out", "start held-out Dice"), ("final_held_out", "final held-out Dice"),
                          ("t95_test", "time to 0.95 x final test Dice (s)"), ("steps95_test", "steps to reach it"),
                          ("t95_held_out", "time to 0.95 x final held-out Dice (s)"),
                          ("train_seconds", "whole fine-tune (s)")]:
            vals = [r[key] for r in runs]
            log(f"  {what:42s} {median([np.nan if v is None else v for v in vals]):8.3f}   per seed "
                + " ".join("n/a" if v is None else f"{v:.3f}" for v in vals))
        out[name] = runs
    log(f"load average at end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
