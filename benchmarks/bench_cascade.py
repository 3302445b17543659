"""Segment-then-segment benchmark (seed 002, Benčević et al.): large images, many small objects.

On seeded synthetic 1024 x 1024 "cells" images (40-120 dark nuclei-like ellipses, semi-axes
2.5-6 px by default, i.e. 5-12 px across: under 1.5 px at S = 128; on a textured background with
faint distractors; like the paper's cells dataset), for input sizes S = image/4 (256) and
image/8 (128), it trains and compares

  (a) a model at input size S: the whole image resized to S x S, probabilities resized back;
  (b) the cascade at S, ours: a coarse model trained at S on 'any' masks (a pixel at S is
      foreground when any pixel it covers is: objects under one pixel survive) + a fine model
      trained on jittered ground-truth crops resized to S, initialised from (a)'s weights;
  (b') the paper's cascade: (a) itself as the coarse model, the same fine model;
  (c) a full-resolution model trained on random 256 x 256 patches, predicted with sliding
      windows (roi 256, overlap 0.25);

also the 'any' coarse model alone as a segmentation (it over-covers by design), and prints,
per S, pixel-level Dice, precision and recall on the full-resolution grid (pooled over the test
images), the recall ratio (b)/(a) with the gate ">= 3x at S = image/8", Dice (b) vs (c), and the
inference time of each relative to (a) on the same images.

    python benchmarks/bench_cascade.py --quick     # small data, few steps: ~5 min on one core
    python benchmarks/bench_cascade.py             # 24 train / 8 test images: ~25 min on one core
    python benchmarks/bench_cascade.py --json /tmp/cascade.json
    python benchmarks/bench_cascade.py --axes 4 12 # larger objects (the model at S finds most of them)

Models: the tiny GroupNorm U-Net of bench_weak_supervision (features 8-16-32), Adam 3e-3,
batch 8, flips, Dice + cross-entropy, one torch thread, ``train_segmentation``; one seed.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))


LR = 3e-3

# ------------------------------------------------------------------------------------- data


def _smooth_noise(gen: np.random.Generator, shape, sigma: float) -> np.ndarray:
    from scipy import ndimage

    noise = ndimage.gaussian_filter(gen.normal(size=shape), sigma, mode="wrap")
    return noise / max(float(noise.std()), 1e-8)


def large_cells(rng, size: int = 1024, count=(40, 120), axes=(4.0, 12.0)):
    """One (1, size, size) float32 image in [0, 1] and its (size, size) int64 mask: dark
    textured ellipses (semi-axes in ``axes``) >= 3 px apart on a pale background textured at
    two scales, plus faint dark smudges (sigma 6 px) as distractors."""
    gen = np.random.default_rng(rng)
    shape = (size, size)
    n = int(gen.integers(count[0], count[1] + 1))
    mask = np.zeros(shape, bool)
    soft = np.zeros(shape, np.float32)
    placed: list[tuple[float, float, float]] = []
    for _ in range(n * 30):
        if len(placed) == n:
            break
        a, b = np.sort(gen.uniform(*axes, 2))[::-1]
        c = gen.uniform(a + 2, size - a - 2, 2)
        if any(np.hypot(c[0] - y, c[1] - x) < a + r + 3 for y, x, r in placed):
            continue
        placed.append((c[0], c[1], a))
        angle = gen.uniform(0, np.pi)
        r = int(np.ceil(a)) + 2
        y0, y1 = max(0, int(c[0]) - r), min(size, int(c[0]) + r + 1)
        x0, x1 = max(0, int(c[1]) - r), min(size, int(c[1]) + r + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(float)
        dy, dx = yy - c[0], xx - c[1]
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        s = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        mask[y0:y1, x0:x1] |= s <= 1
        soft[y0:y1, x0:x1] = np.maximum(soft[y0:y1, x0:x1], np.clip((1 - s) * b + 0.5, 0, 1))
    background = 0.75 + 0.05 * _smooth_noise(gen, shape, 16.0) + 0.03 * _smooth_noise(gen, shape, 2.0)
    smudges = np.clip(_smooth_noise(gen, shape, 6.0) - 2.0, 0, None) * 0.12  # faint dark distractors
    dark = 0.35 + 0.06 * _smooth_noise(gen, shape, 1.0)
    image = (background - smudges) * (1 - soft) + dark * soft + gen.normal(0, 0.04, shape)
    return np.clip(image, 0, 1).astype(np.float32)[None], mask.astype(np.int64)


def make_set(n: int, seed: int, size: int, axes=(4.0, 12.0)):
    children = np.random.SeedSequence(seed).spawn(n)
    return [large_cells(np.random.default_rng(c), size=size, axes=tuple(axes)) for c in children]


# ----------------------------------------------------------------------------------- models


def dice_ce_loss(logits, target, weight):
    """Cross-entropy + soft Dice of the foreground (the paper trains with Dice): 2 % foreground
    pixels otherwise teach "all background" first."""
    import torch

    from medloop.app.engine.losses import weighted_cross_entropy

    p = torch.softmax(logits, dim=1)[:, 1] * weight
    t = (target == 1).to(p.dtype) * weight
    dice = (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return weighted_cross_entropy(logits, target, weight) + 1 - dice


def train(pairs, steps: int, seed: int, init=None, patch=None, fg=0.0, lr=LR):
    import torch
    from bench_weak_supervision import tiny_unet, train_config

    from medloop.app.engine.train import train_segmentation

    torch.manual_seed(seed)
    net = tiny_unet(1, 2)
    if init is not None:
        net.load_state_dict(init.state_dict())
    config = train_config(steps, seed)
    config.patch_size = patch
    config.foreground_fraction = fg
    config.lr = lr
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = train_segmentation(net, pairs, None, config, loss_fn=dice_ce_loss)
    return res.model.eval(), time.perf_counter() - t0


def scores(preds, masks) -> dict[str, float]:
    tp = sum(int(((p > 0) & (m > 0)).sum()) for p, m in zip(preds, masks))
    fp = sum(int(((p > 0) & (m == 0)).sum()) for p, m in zip(preds, masks))
    fn = sum(int(((p == 0) & (m > 0)).sum()) for p, m in zip(preds, masks))
    return {
        "dice": 2 * tp / max(2 * tp + fp + fn, 1),
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
    }


def timed(fn, images):
    out, t0 = [], time.perf_counter()
    for img in images:
        out.append(fn(img))
    return out, time.perf_counter() - t0


def full_resolution(train_set, test_images, test_masks, steps: int, seed: int, log):
    """(c): a model trained on random 256^2 patches, predicted with sliding windows."""
    import torch

    from medloop.app.engine.tiling import sliding_window_inference

    net_c, sec_c = train([(img, m, None) for img, m in train_set], steps, seed, patch=(256, 256), fg=0.5)
    log(f"(c) full-resolution model: {steps} steps on 256^2 patches ({sec_c:.0f} s)")

    def run_c(img):
        p = sliding_window_inference(img, net_c, roi_size=256, overlap=0.25, batch_size=4, activation="softmax",
                                     divisible_by=4, device="cpu")
        return p.argmax(0)

    with torch.inference_mode():
        run_c(test_images[0])  # warm-up
    preds_c, time_c = timed(run_c, test_images)
    score_c = scores(preds_c, test_masks)

    return score_c, time_c


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data and few steps (timing check)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--axes", type=float, nargs=2, default=(2.5, 6.0), metavar=("MIN", "MAX"),
                        help="semi-axes of the objects in pixels (default 2.5 6)")
    parser.add_argument("--sizes", type=int, nargs="+", default=(256, 128), metavar="S", help="input sizes S")
    parser.add_argument("--detect-threshold", type=lambda v: None if v == "labels" else float(v), nargs="+", default=[None],
                        help="crops around coarse foreground probability >= these values ('labels': the coarse labels, as the paper, the default)")
    parser.add_argument("--resize", choices=("bilinear", "nearest"), default="bilinear",
                        help="resizing of images, masks and outputs: bilinear (ours, the default) or nearest (the paper's protocol)")
    parser.add_argument("--skip-full", action="store_true", help="leave out (c), the full-resolution model")
    args = parser.parse_args(argv)

    import torch

    from medloop.plugins.segmentation.cascade import (
        cascade_predict,
        fine_training_pairs,
        predict_resized,
        resize,
        resize_mask,
    )

    torch.set_num_threads(1)
    size = 1024
    if args.quick:
        n_train, n_test, steps = 6, 3, {"a256": 40, "b256": 40, "c": 60, "a128": 150, "b128": 150}
    else:
        n_train, n_test, steps = 24, 8, {"a256": 200, "b256": 200, "c": 300, "a128": 500, "b128": 500}
    seed = args.seed
    log = lambda s: print(s, flush=True)
    t_all = time.perf_counter()
    train_set = make_set(n_train, 1000 + seed, size, args.axes)
    test_set = make_set(n_test, 2000 + seed, size, args.axes)
    objects = [int(len(np.unique(__import__("scipy").ndimage.label(m)[0])) - 1) for _, m in test_set]
    fg = np.mean([m.mean() for _, m in test_set])
    log(f"objects: semi-axes {args.axes[0]:g}-{args.axes[1]:g} px")
    log(f"data: {n_train} train / {n_test} test images of {size}^2, test objects per image {min(objects)}-{max(objects)}, "
        f"foreground {100 * fg:.2f} % ({time.perf_counter() - t_all:.0f} s)")
    test_images = [img for img, _ in test_set]
    test_masks = [m for _, m in test_set]
    rows: list[dict] = []

    # (c) full resolution, sliding windows
    nan = float("nan")
    score_c, time_c = {"dice": nan, "precision": nan, "recall": nan}, nan
    if not args.skip_full:
        score_c, time_c = full_resolution(train_set, test_images, test_masks, steps["c"], seed, log)

    tables = []
    for S in args.sizes:
        tag = f"{S}"
        mode = args.resize
        xs = [resize(torch.from_numpy(img)[None], S, mode)[0].numpy() for img, _ in train_set]
        net_a, sec_a = train([(x, resize_mask(m, S, 2, mode), None) for x, (_, m) in zip(xs, train_set)], steps["a" + tag], seed)
        log(f"(a) S={S}: {steps['a' + tag]} steps on whole images resized to {S}^2 ({sec_a:.0f} s)")
        net_any, sec_any = train([(x, resize_mask(m, S, 2, "any"), None) for x, (_, m) in zip(xs, train_set)], steps["a" + tag], seed)
        log(f"(b) S={S}: coarse model, {steps['a' + tag]} steps on whole images resized to {S}^2 with 'any' masks ({sec_any:.0f} s)")
        fine_pairs = fine_training_pairs([img for img, _ in train_set], [m for _, m in train_set], S, resize_mode=mode,
                                         rng=np.random.default_rng(3000 + seed), per_image=16 if S == 256 else 32)
        net_b, sec_b = train([(x, y, None) for x, y in fine_pairs], steps["b" + tag], seed, init=net_a)
        log(f"(b) S={S}: fine model, {steps['b' + tag]} steps on {len(fine_pairs)} jittered GT crops resized to {S}^2 "
            f"(padding {S // 8}, jitter +-{S // 16}), from (a)'s weights ({sec_b:.0f} s)")

        def run_resized(img, net, S=S):
            return predict_resized(img, net, S, device="cpu", resize_mode=mode).argmax(0)

        run_resized(test_images[0], net_a)  # warm-up
        preds_a, time_a = timed(lambda img: run_resized(img, net_a), test_images)
        sa = scores(preds_a, test_masks)
        preds_any, time_any = timed(lambda img: run_resized(img, net_any), test_images)
        s_any = scores(preds_any, test_masks)
        for threshold in args.detect_threshold:
            results = {}
            for label, coarse in (("any", net_any), ("paper", net_a)):
                crops: list[int] = []

                def run_b(img, coarse=coarse, crops=crops, S=S):
                    r = cascade_predict(img, coarse, net_b, S, device="cpu", detect_threshold=threshold, resize_mode=mode)
                    crops.append(len(r.boxes))
                    return r.probabilities.argmax(0)

                run_b(test_images[0])  # warm-up
                crops.clear()
                preds_b, time_b = timed(run_b, test_images)
                results[label] = (scores(preds_b, test_masks), time_b, crops)
            sb, time_b, crops = results["any"]
            sp, time_p, crops_p = results["paper"]
            ratio = sb["recall"] / max(sa["recall"], 1e-9)
            lines = [
                f"S = {S} (image/{size // S}), detection: {'coarse labels' if threshold is None else f'p(foreground) >= {threshold:g}'}; "
                f"crops per test image: (b) {min(crops)}-{max(crops)} (mean {np.mean(crops):.0f}), (b') mean {np.mean(crops_p):.0f}",
                f"  {'':44s} {'Dice':>7s} {'prec':>7s} {'recall':>7s} {'time/img':>9s} {'time ratio':>10s}",
            ]
            for name, sc, t in (("(a) model at S", sa, time_a),
                                ("(b) cascade at S, coarse on 'any' masks", sb, time_b),
                                ("(b') cascade at S, coarse = (a) (paper)", sp, time_p),
                                ("    its 'any' coarse model alone", s_any, time_any),
                                ("(c) full resolution (sliding)", score_c, time_c)):
                lines.append(f"  {name:44s} {sc['dice']:7.4f} {sc['precision']:7.4f} {sc['recall']:7.4f} "
                             f"{t / n_test:8.3f}s {t / time_a:9.2f}x")
                rows.append({"S": S, "method": name.strip(), **sc, "seconds_per_image": t / n_test, "time_ratio": t / time_a,
                             "axes": list(args.axes), "detect_threshold": threshold, "resize": mode})
            gate = ratio >= 3.0
            lines.append(f"  recall (b)/(a) = {ratio:.2f}x" + (f"  gate >= 3x at image/8: {'PASS' if gate else 'FAIL'}" if size // S == 8 else "")
                         + f"; (b')/(a) = {sp['recall'] / max(sa['recall'], 1e-9):.2f}x")
            lines.append(f"  Dice (b) {sb['dice']:.4f} vs (c) {score_c['dice']:.4f}: difference {sb['dice'] - score_c['dice']:+.4f}")
            tables.append("\n".join(lines))
            log(tables[-1])
    log(f"\nseed {seed}, one run; total {time.perf_counter() - t_all:.0f} s\n")
    print("\n\n".join(tables))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
