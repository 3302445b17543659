"""Batched segment-then-segment (issue #20 §4): the cascade's fine model crop by crop vs in
batches, against the model at S, at S = image/8, in one run.

Timed, per image (median of ``--repeats`` interleaved repeats, after one warm-up each):

  (a) the model at S: the whole image resized to S, one forward, probabilities resized back;
  (1) the cascade at S crop by crop (``batch_size=1``);
  (B) the cascade at S batched by the default voxel budget (on the CPU ``CPU_BATCH_VOXELS`` =
      2^14 input voxels per call: 1 crop of 128^2, 4 of 16^3; see ``crops_per_call``);
  (B20) the cascade batched by the accelerator budget, 2^20 input voxels per call (64 crops of
      128^2), run here on the CPU.

Data: 2-D, the seeded 1024^2 "cells" images of bench_cascade (40-120 nuclei, semi-axes 2.5-6 px);
3-D, seeded 128^3 volumes with 20-40 dark balls (radius 2.5-6 voxels), S = 16, fine model at 16^3.

The networks are UNTRAINED (seeded) tiny GroupNorm U-Nets (features 8-16-32, as bench_cascade):
timing needs no trained weights. So that the number of crops is the real one, the coarse model
is an oracle: it runs the U-Net (its time counts) and returns the ground truth's 'any' mask at S
as logits, i.e. a perfect coarse detector; the fine model is the U-Net itself. The script also
checks that the three cascade forms give the same labels.

    python benchmarks/bench_cascade_batched.py              # 3 images + 2 volumes, 5 repeats: ~2 min
    python benchmarks/bench_cascade_batched.py --threads 2  # torch threads (default 1)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


class Oracle:
    """A coarse "model" that costs one U-Net forward and answers with the ground truth at S."""

    def __init__(self, net, any_mask):
        self.net, self.any_mask = net, any_mask

    def __call__(self, x):
        import torch

        self.net(x)
        fg = torch.from_numpy(self.any_mask.astype(np.float32))[None]
        return torch.stack([torch.zeros_like(fg), 20 * fg - 10], dim=1)


def balls_volume(seed: int, size: int = 128, count=(20, 40), radius=(2.5, 6.0)):
    gen = np.random.default_rng(seed)
    zz, yy, xx = np.indices((size,) * 3, dtype=np.float32)
    mask = np.zeros((size,) * 3, bool)
    for _ in range(int(gen.integers(count[0], count[1] + 1))):
        r = gen.uniform(*radius)
        c = gen.uniform(r + 2, size - r - 2, 3)
        mask |= (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
    image = np.where(mask, 0.35, 0.75) + gen.normal(0, 0.04, mask.shape)
    return image.astype(np.float32)[None], mask.astype(np.int64)


def tiny_net(dims: int):
    import torch

    from medloop.models.nets import build_network

    torch.manual_seed(0)
    return build_network(f"unet{dims}d", spatial_dims=dims, in_channels=1, out_channels=2,
                         features=[8, 16, 32], norm="group", up="bilinear").eval()


def time_case(cases, S: int, repeats: int, log):
    """Median ms per image of (a), (1), (B), (B20) over interleaved repeats; crops per image."""
    from medloop.plugins.segmentation.cascade import CascadeParams, predict_resized, resize_mask, segment_cascade

    dims = cases[0][1].ndim
    net = tiny_net(dims)
    oracles = [Oracle(net, resize_mask(m, S, 2, "any")) for _, m in cases]
    forms = {
        "(a) model at S": None,
        "(1) cascade, crop by crop": CascadeParams(S, batch_size=1, device="cpu"),
        "(B) cascade, batched (CPU budget 2^14)": CascadeParams(S, device="cpu"),
        "(B20) cascade, batched (2^20 budget)": CascadeParams(S, device="cpu", batch_voxels=2**20),
    }

    def run(name, i):
        image = cases[i][0]
        if forms[name] is None:
            return predict_resized(image, net, S, device="cpu").argmax(0), 0
        r = segment_cascade(image, oracles[i], net, forms[name])
        return r.probabilities.argmax(0), len(r.boxes)

    times = {name: [] for name in forms}
    labels, crops = {}, []
    for name in forms:  # warm-up, and the labels to compare
        labels[name] = [run(name, i)[0] for i in range(len(cases))]
    crops = [run("(1) cascade, crop by crop", i)[1] for i in range(len(cases))]
    for _ in range(repeats):
        for name in forms:
            t0 = time.perf_counter()
            for i in range(len(cases)):
                run(name, i)
            times[name].append((time.perf_counter() - t0) / len(cases))
    same = all(np.array_equal(a, b) for n in list(forms)[2:] for a, b in zip(labels[n], labels["(1) cascade, crop by crop"]))
    return {n: 1000 * float(np.median(v)) for n, v in times.items()}, crops, same


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3, help="2-D 1024^2 images (default 3)")
    parser.add_argument("--volumes", type=int, default=2, help="3-D 128^3 volumes (default 2; 0: none)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch
    from bench_cascade import make_set

    torch.set_num_threads(args.threads)
    log = lambda s: print(s, flush=True)
    t_all = time.perf_counter()
    suites = [("2-D 1024^2 cells, S = 128 (image/8)", make_set(args.images, 2000, 1024, (2.5, 6.0)), 128)]
    if args.volumes:
        suites.append(("3-D 128^3 balls, S = 16 (image/8)", [balls_volume(3000 + i) for i in range(args.volumes)], 16))
    for title, cases, S in suites:
        ms, crops, same = time_case(cases, S, args.repeats, log)
        base = ms["(a) model at S"]
        log(f"{title}: {len(cases)} images, crops per image {min(crops)}-{max(crops)} (mean {np.mean(crops):.0f}); "
            f"median of {args.repeats} interleaved repeats, {args.threads} torch thread(s)")
        for name, t in ms.items():
            log(f"  {name:42s} {t:9.1f} ms/image  {t / base:7.1f}x model at S")
        log(f"  batched / crop by crop: {ms['(B) cascade, batched (CPU budget 2^14)'] / ms['(1) cascade, crop by crop']:.2f} (2^14), "
            f"{ms['(B20) cascade, batched (2^20 budget)'] / ms['(1) cascade, crop by crop']:.2f} (2^20); "
            f"issue goal <= 3x model at S: {'met' if min(list(ms.values())[1:]) <= 3 * base else 'NOT met'}; "
            f"labels identical to crop by crop: {same}")
    log(f"total {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
