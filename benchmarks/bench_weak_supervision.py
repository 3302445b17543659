"""Weak-supervision benchmark (spec weak-supervision.md SP-4, PT-4, live-mode latency).

One run prints, per experiment, the weak models' scores and their ratio to an in-run baseline
trained on full masks (median over seeds):

1. Sparse strokes on generator (a) (texture mosaic, K = 4): dense vs sparse x {none, instance,
   mini-batch} vs combined 4:1 sparse + dense with instance balancing (mean Dice, all classes).
2. Points on generator (b) (nuclei): full masks vs Voronoi-only, cluster-only, both, both + CRF
   fine-tune (pixel F1 and AJI of connected components), with run_points' own losses.
3. Live mode: ``LiveSession.update`` latency on a 512 x 512 image (U-Net 16-128) and on one
   128 x 128 slice of a 128^3 volume.

    python benchmarks/bench_weak_supervision.py --quick          # 1 seed, <= ~10 min on 2 cores
    python benchmarks/bench_weak_supervision.py                  # 3 seeds
    python benchmarks/bench_weak_supervision.py --json /tmp/ws.json

Models are the spec's tiny U-Net (features 8-16-32, GroupNorm, bilinear up), Adam 1e-3, batch 8,
flips, one torch thread, trained with ``train_segmentation`` on whole 64 x 64 images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

K_MOSAIC = 4
STROKE_COUNTS = [3, 2, 2, 1]  # skewed per-class stroke counts (spec section 1, CPU version)


# ----------------------------------------------------------------------------------- helpers


def tiny_unet(in_channels: int, out_channels: int, features=(8, 16, 32)):
    from medloop.models.nets import build_network

    return build_network(
        "unet2d", spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
        features=list(features), norm="group", up="bilinear",
    )


def train_config(steps: int, seed: int):
    from medloop.app.engine.augment import AugmentConfig
    from medloop.app.engine.train import TrainConfig

    epochs = max(1, steps // 50)
    aug = AugmentConfig.none()
    aug.p_flip = 0.5
    return TrainConfig(
        epochs=epochs, steps_per_epoch=max(1, steps // epochs), batch_size=8, lr=1e-3,
        augment=aug, foreground_fraction=0.0, seed=seed, num_threads=1, device="cpu",
    )


def train(pairs, out_channels: int, steps: int, seed: int, loss_fn=None, in_channels: int = 3):
    import torch

    from medloop.app.engine.train import train_segmentation

    torch.manual_seed(seed)
    net = tiny_unet(in_channels, out_channels)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = train_segmentation(net, pairs, None, train_config(steps, seed), loss_fn=loss_fn)
    return res.model.eval(), time.perf_counter() - t0


def predict(net, images):
    import torch

    from medloop.app.engine.train import predict_whole

    out = []
    with torch.inference_mode():
        for img in images:
            pred, _ = predict_whole(net, img, int(getattr(net, "divisible_by", 1) or 1))
            out.append(pred)
    return out


def aji(pred_inst: np.ndarray, true_inst: np.ndarray) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017) of two instance maps (0 = background)."""
    t_ids = [i for i in np.unique(true_inst) if i > 0]
    p_ids = [i for i in np.unique(pred_inst) if i > 0]
    if not t_ids:
        return 1.0 if not p_ids else 0.0
    p_areas = {j: int((pred_inst == j).sum()) for j in p_ids}
    used: set[int] = set()
    c = u = 0
    for i in t_ids:
        g = true_inst == i
        best, best_iou, best_inter, best_union = None, -1.0, 0, int(g.sum())
        for j in np.unique(pred_inst[g]):
            if j == 0:
                continue
            s = pred_inst == j
            inter = int((g & s).sum())
            union = int((g | s).sum())
            if inter / union > best_iou:
                best, best_iou, best_inter, best_union = j, inter / union, inter, union
        c += best_inter
        u += best_union
        if best is not None:
            used.add(int(best))
    u += sum(a for j, a in p_areas.items() if int(j) not in used)
    return c / u if u else 1.0


def find_aji():
    """An AJI function from the project's metrics module, if there is one."""
    from medloop.app.engine import metrics

    for name in ("aji", "aggregated_jaccard_index", "aggregated_jaccard"):
        if hasattr(metrics, name):
            return getattr(metrics, name), f"medloop.app.engine.metrics.{name}"
    return aji, "bench_weak_supervision.aji (metrics.py has none)"


def median(values):
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.median(v)) if v else float("nan")


# ------------------------------------------------------------------------------- 1. strokes


def bench_sparse(seed: int, steps: int, n_train: int, n_test: int, rows: list, log) -> dict[str, float]:
    from medloop.app.engine.metrics import mean_dice
    from medloop.plugins.correction.sparse import balanced_loss_fn, stroke_pair
    from medloop.plugins.correction.synth import dataset
    from medloop.plugins.correction.weaklabels import dense_subset, strokes

    train_set = dataset("mosaic", n_train, seed=1000 + seed, num_classes=K_MOSAIC)
    test_set = dataset("mosaic", n_test, seed=2000 + seed, num_classes=K_MOSAIC)
    gen = np.random.default_rng(3000 + seed)
    stroke_maps, cover = [], []
    for s in train_set:
        lab, c = strokes(s.semantic, coverage=0.05, margin=3, per_class_counts=STROKE_COUNTS, rng=gen)
        stroke_maps.append(lab)
        cover.append(c)
    per_class = np.bincount(np.concatenate([m[m > 0] for m in stroke_maps]), minlength=K_MOSAIC + 1)[1:]
    log(f"  [sparse seed {seed}] stroke coverage mean {np.mean(cover):.4f} max {np.max(cover):.4f}; "
        f"annotated pixels per class {per_class.tolist()}")
    dense_pairs = [(s.image, s.semantic.astype(np.int64), None) for s in train_set]
    sparse_pairs = [stroke_pair(s.image, m) for s, m in zip(train_set, stroke_maps)]
    dense_idx = set(dense_subset(stroke_maps, 0.2, rng=4000 + seed))
    combined_pairs = [
        (s.image, s.semantic.astype(np.int64), np.ones(s.semantic.shape, np.float32)) if i in dense_idx else sp
        for i, (s, sp) in enumerate(zip(train_set, sparse_pairs))
    ]
    truth = np.concatenate([s.semantic.ravel() for s in test_set])
    conditions = [
        ("dense", dense_pairs, None),
        ("sparse_none", sparse_pairs, balanced_loss_fn("none")),
        ("sparse_instance", sparse_pairs, balanced_loss_fn("instance")),
        ("sparse_minibatch", sparse_pairs, balanced_loss_fn("mini-batch")),
        ("combined_instance", combined_pairs, balanced_loss_fn("instance")),
    ]
    out = {}
    for name, pairs, loss in conditions:
        net, sec = train(pairs, K_MOSAIC, steps, seed, loss)
        preds = predict(net, [s.image for s in test_set])
        d = mean_dice(np.concatenate([p.ravel() for p in preds]), truth, K_MOSAIC, ignore_background=False)
        out[name] = d
        log(f"  [sparse seed {seed}] {name:18s} mean Dice {d:.4f}  ({sec:.0f} s)")
        rows.append({"paper": "bokhorst", "condition": name, "seed": seed, "metric": "mean_dice", "value": d,
                     "steps": steps, "seconds": round(sec, 1), "coverage": float(np.mean(cover))})
    return out


# -------------------------------------------------------------------------------- 2. points


def point_loss_fn(use_vor: bool, use_clu: bool):
    """run_points' own loss (decodes voronoi + 3 * cluster codes); one map dropped for the
    single-map conditions."""
    from medloop.plugins.correction.point_training import PointLoss

    return PointLoss(voronoi=use_vor, cluster=use_clu)


def crf_fine_tune(net, pairs, steps: int, seed: int, value_range: float):
    """Qu et al.'s CRF stage as run_points does it: CrfPointLoss (image from an input stash on
    the network), CRF_EPOCH_FRACTION of the steps at CRF_LR_FACTOR x the learning rate."""
    import copy
    from dataclasses import replace

    from medloop.app.engine.train import train_segmentation
    from medloop.plugins.correction.point_training import (
        CRF_EPOCH_FRACTION,
        CRF_LR_FACTOR,
        CrfPointLoss,
        InputStash,
    )

    net = copy.deepcopy(net).train()
    stash = InputStash()
    handle = stash.attach(net)
    crf_steps = max(1, round(steps * CRF_EPOCH_FRACTION))
    base = train_config(steps, seed + 1)
    cfg = train_config(crf_steps, seed + 1)
    cfg = replace(cfg, lr=base.lr * CRF_LR_FACTOR)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = train_segmentation(net, pairs, None, cfg, loss_fn=CrfPointLoss(stash, value_range=value_range))
    finally:
        handle.remove()
    return res.model.eval(), time.perf_counter() - t0


def bench_points(seed: int, steps: int, n_train: int, n_test: int, rows: list, log, aji_fn) -> dict[str, dict[str, float]]:
    from scipy import ndimage

    from medloop.app.engine.metrics import confusion_counts, precision_recall_f1
    from medloop.plugins.correction.point_training import encode_maps, value_range
    from medloop.plugins.correction.points import cluster_labels, voronoi_labels
    from medloop.plugins.correction.synth import dataset
    from medloop.plugins.correction.weaklabels import points

    train_set = dataset("nuclei", n_train, seed=5000 + seed)
    test_set = dataset("nuclei", n_test, seed=6000 + seed)
    full_pairs, weak_pairs = [], []
    acc = {"vor": [0, 0], "clu": [0, 0]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, s in enumerate(train_set):
            pts = points(s.instances)
            vor = voronoi_labels(pts, s.semantic.shape).astype(np.int64)
            clu = cluster_labels(s.image, pts, rng=seed * 1000 + i).astype(np.int64)
            for key, m in (("vor", vor), ("clu", clu)):
                known = m > 0
                acc[key][0] += int(((m[known] == 2) == (s.semantic[known] == 1)).sum())
                acc[key][1] += int(known.sum())
            full_pairs.append((s.image, s.semantic.astype(np.int64), None))
            # Both maps in one label (run_points' encoding); the loss decodes them.
            code = encode_maps(vor, clu)
            weak_pairs.append((s.image, code, (code > 0).astype(np.float32)))
    n_pix = len(train_set) * train_set[0].semantic.size
    log(f"  [points seed {seed}] pseudo-label accuracy on non-ignored pixels: "
        f"voronoi {acc['vor'][0] / max(acc['vor'][1], 1):.3f} ({acc['vor'][1] / n_pix:.0%} of pixels), "
        f"cluster {acc['clu'][0] / max(acc['clu'][1], 1):.3f} ({acc['clu'][1] / n_pix:.0%})")
    conditions = [
        ("full", full_pairs, None),
        ("voronoi", weak_pairs, point_loss_fn(True, False)),
        ("cluster", weak_pairs, point_loss_fn(False, True)),
        ("both", weak_pairs, point_loss_fn(True, True)),
        ("both+crf", weak_pairs, "crf"),
    ]
    vrange = value_range(*[s.image for s in train_set])
    truth = np.concatenate([s.semantic.ravel() for s in test_set])
    out, nets = {}, {}
    for name, pairs, loss in conditions:
        if loss == "crf":
            net, sec = crf_fine_tune(nets["both"], pairs, steps, seed, vrange)
        else:
            net, sec = train(pairs, 2, steps, seed, loss)
        nets[name] = net
        preds = predict(net, [s.image for s in test_set])
        f1 = precision_recall_f1(confusion_counts(np.concatenate([p.ravel() for p in preds]) == 1, truth == 1))["f1"]
        a = float(np.mean([aji_fn(ndimage.label(p == 1)[0], s.instances) for p, s in zip(preds, test_set)]))
        out[name] = {"f1": f1, "aji": a}
        log(f"  [points seed {seed}] {name:8s} pixel F1 {f1:.4f}  AJI {a:.4f}  ({sec:.0f} s)")
        for metric, v in (("pixel_f1", f1), ("aji", a)):
            rows.append({"paper": "qu", "condition": name, "seed": seed, "metric": metric, "value": v,
                         "steps": steps if name != "both+crf" else round(steps / 6), "seconds": round(sec, 1)})
    return out


# ------------------------------------------------------------------------------------ 3. live


def _grow_strokes(truth: np.ndarray, n_updates: int, seed: int) -> list[np.ndarray]:
    """Cumulative stroke maps: each update adds one more batch of strokes (as a user painting)."""
    from medloop.plugins.correction.weaklabels import strokes

    full, _ = strokes(truth, coverage=0.02, margin=3, per_class_counts=STROKE_COUNTS, rng=seed)
    ys, xs = np.nonzero(full)
    order = np.argsort(xs + ys * 0.001, kind="stable")  # paint left to right
    maps = []
    for u in range(1, n_updates + 1):
        m = np.zeros_like(full)
        keep = order[: max(1, len(order) * u // n_updates)]
        m[ys[keep], xs[keep]] = full[ys[keep], xs[keep]]
        if len(np.unique(m[m > 0])) < 2:  # at least two classes from the first update on
            m = full.copy() if u == n_updates else m
        maps.append(m)
    return maps


def _mosaic(size: int, seed: int, regions=(6, 10)):
    from medloop.plugins.correction.synth import texture_mosaic

    return texture_mosaic(seed, num_classes=K_MOSAIC, regions=regions, size=size)


def bench_live(n_updates: int, rows: list, log) -> dict[str, dict[str, float]]:
    import torch

    from medloop.models.nets import build_network
    from medloop.plugins.correction.retrain import LiveSession

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = build_network("unet2d", spatial_dims=2, in_channels=3, out_channels=K_MOSAIC,
                        features=[16, 32, 64, 128], norm="group", up="bilinear").eval()
    results = {}
    s512 = _mosaic(512, 7, regions=(8, 14))
    # 128^3 volume: a stack of mosaic slices; the session gets slice 64 (as the widget does, x[:, z]).
    blocks = [_mosaic(128, 100 + b, regions=(3, 5)) for b in range(8)]  # 16 slices per block
    vol = np.stack([blocks[z // 16].image for z in range(128)], axis=1)  # (C, Z, Y, X)
    z = 64
    s128_truth = blocks[z // 16].semantic
    cases = [("512x512 image", s512.image, s512.semantic), ("128x128 slice of 128^3 volume", vol[:, z], s128_truth)]
    for name, image, truth in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            session = LiveSession(net, image)
            t0 = time.perf_counter()
            session.prepare()
            prep = time.perf_counter() - t0
            for m in _grow_strokes(truth, n_updates, 11):
                if len(np.unique(m[m > 0])) >= 1:
                    session.update(m)
        t = np.array(session.timings) * 1000
        results[name] = {"features_ms": prep * 1000, "median_ms": float(np.median(t)), "p95_ms": float(np.percentile(t, 95)),
                         "first_ms": float(t[0]), "updates": len(t)}
        log(f"  [live] {name}: features once {prep * 1000:.0f} ms; update median {np.median(t):.1f} ms, "
            f"first {t[0]:.0f} ms, p95 {np.percentile(t, 95):.1f} ms over {len(t)} updates (steps={session.steps}, warm_steps={session.warm_steps})")
        rows.append({"paper": "live", "condition": name, "seed": 0, "metric": "update_ms", **results[name]})
    return results


# ------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds (median reported); --quick: 1")
    ap.add_argument("--steps", type=int, default=None, help="training steps per model (default 900; --quick 500)")
    ap.add_argument("--quick", action="store_true", help="1 seed, fewer steps: <= ~10 min on 2 shared cores")
    ap.add_argument("--only", choices=("sparse", "points", "live"), action="append", help="run only these parts")
    ap.add_argument("--json", type=Path, default=None, help="write result rows here")
    ap.add_argument("--live-updates", type=int, default=20)
    args = ap.parse_args(argv)
    seeds = 1 if args.quick and args.seeds == 3 else args.seeds
    steps = args.steps or (500 if args.quick else 900)
    parts = args.only or ["sparse", "points", "live"]

    import torch

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    rows: list[dict] = []

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(f"bench_weak_supervision: seeds={seeds} steps/model={steps} torch threads=1 parts={parts}")
    ok = True
    if "sparse" in parts:
        log("\n== 1. sparse strokes, generator (a) K=4, 32 train / 16 test, coverage <= 5 %, margin 3, counts 3/2/2/1 ==")
        per_seed = [bench_sparse(s, steps, 32, 16, rows, log) for s in range(seeds)]
        med = {k: median([p[k] for p in per_seed]) for k in per_seed[0]}
        dense = med["dense"]
        for k, v in med.items():
            ratios = [p[k] / p["dense"] for p in per_seed]
            log(f"  {k:18s} mean Dice {v:.4f}   ratio to dense {median(ratios):.3f}")
        best = max(("sparse_none", "sparse_instance", "sparse_minibatch"), key=lambda k: med[k])
        r_best = median([p[best] / p["dense"] for p in per_seed])
        r_comb = median([p["combined_instance"] / p["dense"] for p in per_seed])
        log(f"  SP-4 best sparse ({best}) {r_best:.3f} x dense  target >= 0.90  {'PASS' if r_best >= 0.90 else 'FAIL'}")
        log(f"  SP-4 combined 4:1 instance {r_comb:.3f} x dense  target >= 0.95  {'PASS' if r_comb >= 0.95 else 'FAIL'}")
        order = med["sparse_none"] <= med["sparse_instance"] <= med["sparse_minibatch"]
        log(f"  balancing order none <= instance <= mini-batch: {order} (reported, not gated)")
        ok &= r_best >= 0.90 and r_comb >= 0.95
        _ = dense
    if "points" in parts:
        aji_fn, aji_name = find_aji()
        log(f"\n== 2. points, generator (b), 32 train / 12 test; AJI from {aji_name} ==")
        per_seed = [bench_points(s, steps, 32, 12, rows, log, aji_fn) for s in range(seeds)]
        for k in per_seed[0]:
            f1 = median([p[k]["f1"] for p in per_seed])
            a = median([p[k]["aji"] for p in per_seed])
            rf = median([p[k]["f1"] / p["full"]["f1"] for p in per_seed])
            ra = median([p[k]["aji"] / max(p["full"]["aji"], 1e-9) for p in per_seed])
            log(f"  {k:8s} pixel F1 {f1:.4f} (ratio {rf:.3f})   AJI {a:.4f} (ratio {ra:.3f})")
        r_both = median([p["both"]["f1"] / p["full"]["f1"] for p in per_seed])
        aji_both = median([p["both"]["aji"] for p in per_seed])
        aji_other = max(median([p["voronoi"]["aji"] for p in per_seed]), median([p["cluster"]["aji"] for p in per_seed]))
        log(f"  PT-4 both F1 {r_both:.3f} x full  target >= 0.85  {'PASS' if r_both >= 0.85 else 'FAIL'}")
        log(f"  PT-4 AJI(both) {aji_both:.4f} > max(voronoi, cluster) {aji_other:.4f}: {'PASS' if aji_both > aji_other else 'FAIL'}")
        d_crf = median([p["both+crf"]["f1"] - p["both"]["f1"] for p in per_seed])
        log(f"  PT-4 CRF fine-tune changes F1 by {d_crf:+.4f}  target >= -0.01  {'PASS' if d_crf >= -0.01 else 'FAIL'}")
        ok &= r_both >= 0.85 and aji_both > aji_other and d_crf >= -0.01
    if "live" in parts:
        log(f"\n== 3. live mode LiveSession.update latency (U-Net 16-32-64-128, GroupNorm, 1 thread, {args.live_updates} updates) ==")
        bench_live(args.live_updates, rows, log)
    total = time.perf_counter() - t_start
    log(f"\ntotal {total:.0f} s; all gated targets met: {ok}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
        log(f"rows written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
