"""Benchmark: de Bel's seam-free tiling (staining spec §2.4) — seams, throughput, memory.

    .venv/bin/python benchmarks/bench_stain_tiling.py [--seeds 3] [--seam-width 8]
        [--size 10000 ...] [--net unet|pointwise] [--width 16] [--depth 2]
        [--tile 512 256 128] [--batch 1] [--block 2048] [--threads 1] [--skip-seams]
        [--skip-throughput]

1. **Seams.** A random-init depth-3 instance-norm U-Net (``--seam-width`` filters at the top)
   translates the 512 x 512 ``skimage.data.immunohistochemistry()`` image with tiles of
   256 / 128 / 64 (in / kept / stride) and pyramid, flat and literal Eq. 2 weights, kept-centre
   tiles without overlap ("none", stride 128) and plain non-overlapping 128 tiles ("naive": no
   context, no kept centre). Seam ratio = mean |horizontal gradient| across the method's own
   tile-border columns / across the other columns (``metrics.seam_ratio``); the untiled pass is
   measured on the pyramid's and the naive grid's columns for reference. Goal: pyramid <= 1.05.
   The spec's run ([ours], width unstated): pyramid 0.95, flat 0.99, literal 1.11, naive 1.48,
   untiled 0.94.
2. **Throughput and memory.** For each ``--size`` (N or HxW) a synthetic RGB slide (tiled
   pyramidal TIFF, 0.25 µm/px) is translated by :func:`~medloop.app.engine.tiling.translate_level`
   into a tiled RGB pyramid, in a fresh subprocess: megapixels of the slide per second, tile
   passes, CPU seconds (user + system: on a shared machine MP per CPU-second is the steadier
   figure), and the peak resident set (``VmHWM``) — its growth during the run and its total,
   imports included. Goal: under 2 GB whatever the slide size. ``--net unet``: the spec's CPU
   staining generator (IN U-Net, depth 2, width 16, 0.14 M parameters, tiles 512 / 256 / 128);
   ``--net pointwise``: ``1 - x``, which measures the machinery alone (reading, tiling,
   blending, writing). The written pyramid is opened with OpenSlide and must have the slide's
   size and µm/px.

CPU runs here use one thread (``--threads``) on a shared 2-core machine; the paper's figure is
>= 0.83 MP/s on a K80 GPU, for a larger network.

Measured (one thread of a shared 2-core CPU, load about 4; torch 2.13 CPU):

* seams, 3 seeds, width 8: pyramid 0.990 / 0.972 / 0.978, flat 0.999 / 0.987 / 1.007, literal
  1.062 / 1.054 / 1.103, none 1.067 / 1.035 / 1.100, naive 2.508 / 2.112 / 2.379; untiled on the
  pyramid's columns 0.932 / 0.955 / 0.899 (47 s).
* ``--size 1024 2048 --block 1024`` (the CPU staining net): 1024^2 42 s, 0.025 MP/s
  (0.034 MP per CPU-second), 81 tiles, peak 721 MB (+272); 2048^2 162 s, 0.026 MP/s (0.036),
  324 tiles, peak 732 MB (+336).
* ``--net pointwise --size 4000 10000 2048x40000``: 3.2 / 2.8 / 4.3 MP/s (5.7 / 5.5 / 5.4 MP per
  CPU-second), peak 659 / 849 / 932 MB (+325 / +514 / +598; the growth levels off at the RGB
  band budget, 128 MiB of rows per band). The 10000^2 slide through the CPU staining net would
  take about 45 min on this one thread (0.036 MP per CPU-second); its memory is that of the
  2048^2 run plus the band, as above.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEAM_GOAL = 1.05
MEMORY_GOAL_MB = 2048


# --------------------------------------------------------------------------------------------
# Seams


def seam_methods() -> dict[str, object]:
    from medloop.app.engine.tiling import TilingParams

    kept = dict(keep=128, stride=64, batch_size=4, divisible_by=8)
    return {
        "pyramid": TilingParams(256, blend="pyramid", **kept),
        "flat": TilingParams(256, blend="flat", **kept),
        "literal Eq. 2": TilingParams(256, blend="literal", **kept),
        "none (kept, stride 128)": TilingParams(256, keep=128, blend="none", batch_size=4, divisible_by=8),
        "naive (128 tiles)": TilingParams(128, keep=128, blend="none", batch_size=4, divisible_by=8),
    }


def seam_ratios(seed: int, width: int) -> dict[str, float]:
    import torch
    from skimage import data

    from medloop.app.engine.metrics import seam_ratio
    from medloop.app.engine.tiling import tiled_inference, tiling_grid
    from tests.app.engine.stain_nets import tiny_unet

    image = (data.immunohistochemistry().transpose(2, 0, 1) / 255).astype(np.float32)
    net = tiny_unet(seed, width=width, depth=3)
    ratios, columns = {}, {}
    for name, params in seam_methods().items():
        columns[name] = tiling_grid(image.shape[1:], params).seams(1)
        ratios[name] = seam_ratio(tiled_inference(image, net, params), columns[name])
    with torch.inference_mode():
        whole = net(torch.from_numpy(image)[None])[0].numpy()
    ratios["untiled, pyramid's columns"] = seam_ratio(whole, columns["pyramid"])
    ratios["untiled, naive's columns"] = seam_ratio(whole, columns["naive (128 tiles)"])
    return ratios


def run_seams(seeds: int, width: int) -> bool:
    print(f"Seams: random-init IN U-Net depth 3 width {width}, IHC 512x512, tiles 256/128/64")
    rows = {}
    t = time.perf_counter()
    for seed in range(seeds):
        for name, value in seam_ratios(seed, width).items():
            rows.setdefault(name, []).append(value)
    print(f"  {'method':32s} " + " ".join(f"seed {s:<3d}" for s in range(seeds)) + "   mean")
    for name, values in rows.items():
        print(f"  {name:32s} " + " ".join(f"{v:8.3f}" for v in values) + f"  {np.mean(values):6.3f}")
    worst = max(rows["pyramid"])
    below = all(p < n for p, n in zip(rows["pyramid"], rows["naive (128 tiles)"]))
    ok = worst <= SEAM_GOAL and below
    print(f"  pyramid worst {worst:.3f} (goal <= {SEAM_GOAL}), below naive for every seed: {below} "
          f"-> {'PASS' if ok else 'FAIL'}  [{time.perf_counter() - t:.0f} s]")
    return ok


# --------------------------------------------------------------------------------------------
# Throughput and memory (one fresh subprocess per slide size)

CHILD = """
import json, os, sys, time
sys.path.insert(0, {root!r})
a = json.loads({args!r})
import numpy as np, torch
torch.set_num_threads(a["threads"])
from medloop.app.engine.tiling import TilingParams, TranslationParams, translate_level
from medloop.app.io.slide import read_slide
from tests.app.engine.stain_nets import tiny_unet
from tests.app.io.slide_synth import write_synthetic_slide

def status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024

folder = a["folder"]
h, w = a["size"]
src = f"{{folder}}/slide-{{h}}x{{w}}.tif"
write_synthetic_slide(src, size=(h, w), tile=512, mpp=0.25, pattern="blocks", flavor="generic")
image = read_slide(src)
if a["net"] == "unet":
    net = tiny_unet(0, width=a["width"], depth=a["depth"])
    predictor = lambda x: (net(x) + 1) / 2
    divisible = net.divisible_by
else:
    predictor, divisible = (lambda x: 1 - x), 1
tin, keep, stride = a["tile"]
params = TranslationParams(
    TilingParams(tin, keep=keep, stride=stride, batch_size=a["batch"], divisible_by=divisible),
    block_size=a["block"],
)
with torch.inference_mode():  # warm up the kernels outside the timing
    predictor(torch.zeros(1, 3, tin, tin))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the high-water mark to the current resident set
base = status_mb("VmRSS")
tiles = [0]
cpu = os.times()
t = time.perf_counter()
out = translate_level(image.pyramid[0], predictor, f"{{folder}}/out-{{h}}x{{w}}.tif", image.spacing, params,
                      progress=lambda d, n: tiles.__setitem__(0, n))
seconds = time.perf_counter() - t
cpu = sum(os.times()[:2]) - sum(cpu[:2])  # user + system of this process, all its threads
peak = status_mb("VmHWM")
import openslide
back = openslide.OpenSlide(str(out))
ok = back.dimensions == (w, h) and abs(float(back.properties["openslide.mpp-x"]) - 0.25) < 1e-6
print(json.dumps(dict(seconds=seconds, cpu=cpu, tiles=tiles[0], base_mb=base, peak_mb=peak, levels=back.level_count,
                      opens=ok, out_mb=out.stat().st_size / 2**20)))
"""


def run_size(size: tuple[int, int], args: argparse.Namespace, folder: str) -> dict:
    child = dict(size=size, folder=folder, net=args.net, width=args.width, depth=args.depth,
                 tile=args.tile, batch=args.batch, block=args.block, threads=args.threads)
    script = textwrap.dedent(CHILD).format(root=str(ROOT), args=json.dumps(child))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_throughput(args: argparse.Namespace) -> bool:
    net = (f"IN U-Net depth {args.depth} width {args.width}" if args.net == "unet" else "pointwise 1 - x")
    tin, keep, stride = args.tile
    print(f"\nThroughput: {net}, tiles {tin}/{keep}/{stride}, batch {args.batch}, blocks {args.block}, "
          f"{args.threads} thread(s)")
    print(f"  {'slide':>13s} {'seconds':>8s} {'MP/s':>7s} {'CPU s':>7s} {'MP/CPU-s':>9s} {'tiles':>6s} "
          f"{'peak growth MB':>15s} {'peak total MB':>14s} {'levels':>6s} {'opens':>5s}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="medloop-bench-stain-") as folder:
        for size in args.size:
            r = run_size(size, args, folder)
            h, w = size
            mp_s = h * w / 1e6 / r["seconds"]
            grow = r["peak_mb"] - r["base_mb"]
            print(f"  {h:>6d}x{w:<6d} {r['seconds']:8.1f} {mp_s:7.3f} {r['cpu']:7.1f} "
                  f"{h * w / 1e6 / r['cpu']:9.3f} {r['tiles']:6d} {grow:15.0f} {r['peak_mb']:14.0f} "
                  f"{r['levels']:6d} {str(r['opens']):>5s}")
            ok = ok and r["opens"] and r["peak_mb"] < MEMORY_GOAL_MB
    print(f"  memory goal: peak total < {MEMORY_GOAL_MB} MB at every size -> {'PASS' if ok else 'FAIL'}")
    return ok


def slide_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seam-width", type=int, default=8)
    parser.add_argument("--size", type=slide_size, nargs="+", default=[(10000, 10000)],
                        help="N (N x N) or HxW, e.g. 2048x40000")
    parser.add_argument("--net", choices=("unet", "pointwise"), default="unet")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--tile", type=int, nargs=3, default=[512, 256, 128], metavar=("IN", "KEEP", "STRIDE"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--block", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-seams", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    ok = True
    if not args.skip_seams:
        ok = run_seams(args.seeds, args.seam_width) and ok
    if not args.skip_throughput:
        ok = run_throughput(args) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
