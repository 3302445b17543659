"""Benchmark: medloop's sliding_window_inference against MONAI's, same model, input and device.

Runs a 3-D U-Net-like network (4 levels, 16 base features) over a (1, 192, 224, 192) float32
volume with 96^3 tiles, overlap 0.25, Gaussian blending, batch 4, and prints, as medians of
``--repeats`` runs after a warm-up:

* our time / MONAI's time (target <= 1.0) and our peak memory / MONAI's;
* the max abs difference of the outputs (must be <= 1e-4);
* the tiling overhead: our total time / the time of the network alone on the same tiles,
  already batched on the device (target <= 1.15).

MONAI is a benchmark-only dependency (``pip install monai``). For a quicker run:
``python benchmarks/bench_tiling_vs_monai.py --size 96 112 96 --roi 64``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1, bias=False), nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
    )


class UNet3D(nn.Module):
    """A plain 3-D U-Net: ``levels`` resolutions, features doubling from ``base``."""

    def __init__(self, in_channels: int = 1, classes: int = 2, base: int = 16, levels: int = 4) -> None:
        super().__init__()
        feats = [base * 2**k for k in range(levels)]
        self.down = nn.ModuleList()
        cin = in_channels
        for f in feats:
            self.down.append(_block(cin, f))
            cin = f
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList(nn.ConvTranspose3d(feats[k + 1], feats[k], 2, stride=2) for k in range(levels - 1))
        self.dec = nn.ModuleList(_block(2 * feats[k], feats[k]) for k in range(levels - 1))
        self.head = nn.Conv3d(feats[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for k, block in enumerate(self.down):
            x = block(x)
            if k < len(self.down) - 1:
                skips.append(x)
                x = self.pool(x)
        for k in reversed(range(len(self.up))):
            x = self.dec[k](torch.cat([self.up[k](x), skips[k]], dim=1))
        return self.head(x)


class Pointwise(nn.Module):
    """A nearly free "network" (two channels: x and -x), so that time and memory are the
    tiling machinery's own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, -x], dim=1)


def build_model(device: torch.device) -> nn.Module:
    try:  # the project's own network, once it exists
        from medloop.models.nets import build_network  # type: ignore[import-not-found]

        model = build_network("unet3d", in_channels=1, out_channels=2, features=(16, 32, 64, 128))
    except Exception:
        model = UNet3D()
    return model.to(device).eval()


class PeakRSS:
    """Peak resident memory above the starting point, sampled every 2 ms (covers torch's
    allocations, which tracemalloc does not see)."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        self.base = self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.002):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def delta(self) -> int:
        return self.peak - self.base


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn()``. On a shared CPU the CPU time is the
    steadier measure: other processes' load stretches wall time, not our CPU time."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes ``fn`` needs beyond what was allocated before: GPU memory on CUDA, else the
    growth of resident memory (run in a fresh process, where freed memory is not yet cached)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - base
    with PeakRSS() as rss:
        fn()
    return rss.delta


def _memory_child(argv: list[str], which: str, pointwise: bool, queue: Any) -> None:
    setup = _setup(argv, pointwise)
    setup[which]()  # warm-up: lazy imports and one-off initialisation are not the tiling's
    queue.put(peak_memory(setup[which], setup["device"]))


def fresh_peak_memory(argv: list[str], which: str, pointwise: bool = False) -> int:
    """:func:`peak_memory` of one implementation in a new process (spawned: no shared heap)."""
    import multiprocessing as mp

    import os

    # A fixed mmap threshold makes glibc return every large freed block to the system, so
    # the warm-up's freed buffers do not hide the measured run's allocations.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(256 * 1024)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(argv, which, pointwise, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return int(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--size", type=int, nargs=3, default=(192, 224, 192), metavar=("D", "H", "W"))
    parser.add_argument("--roi", type=int, default=96)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--amp", action="store_true", help="mixed precision for both (skips the 1e-4 check)")
    parser.add_argument("--tiling-only", action="store_true", help="skip the U-Net runs (quick)")
    return parser


def _setup(argv: list[str] | None, pointwise: bool = False) -> dict[str, Any]:
    """Model, input and the three timed callables for the parsed arguments."""
    from monai.inferers import sliding_window_inference as monai_swi

    from medloop.app.engine.devices import autocast_for, choose_device
    from medloop.app.engine.tiling import sliding_window_inference, tile_grid

    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    torch.manual_seed(0)
    model = Pointwise().to(device).eval() if pointwise else build_model(device)
    image = np.random.default_rng(0).standard_normal((1, *args.size), dtype=np.float32)
    roi = (args.roi,) * 3
    grid = tile_grid(args.size, roi, args.overlap)
    amp = bool(args.amp)

    def ours() -> np.ndarray:
        return sliding_window_inference(
            image, model, roi, overlap=args.overlap, blend="gaussian", batch_size=args.batch,
            device=device, amp=amp,
        )

    def theirs() -> np.ndarray:
        # MONAI's best set-up: the volume on the device, output back to the host as numpy.
        with torch.inference_mode(), autocast_for(device, amp):
            x = torch.from_numpy(image)[None].to(device)
            out = monai_swi(x, roi, args.batch, model, overlap=args.overlap, mode="gaussian")
            return out[0].float().cpu().numpy()

    # The network alone on the same tiles, batched and already on the device.
    tiles = [
        torch.from_numpy(np.ascontiguousarray(image[(slice(None), *(slice(s, s + r) for s, r in zip(t, roi)))]))
        for t in grid.tiles()
    ]
    batches = [torch.stack(tiles[i : i + args.batch]).to(device) for i in range(0, len(tiles), args.batch)]
    del tiles

    def forward_only() -> None:
        with torch.inference_mode(), autocast_for(device, amp):
            for b in batches:
                model(b)

    return dict(args=args, device=device, model=model, image=image, roi=roi, grid=grid, amp=amp,
                ours=ours, monai=theirs, forward=forward_only)


def _time_all(setup: dict[str, Any], repeats: int) -> dict[str, tuple[float, float, list[float]]]:
    """Median (wall, cpu) seconds and the wall runs of forward / ours / monai, interleaved so
    that drifting machine load hits all three alike."""
    runs: dict[str, list[tuple[float, float]]] = {"forward": [], "ours": [], "monai": []}
    for _ in range(repeats):
        for k in runs:
            runs[k].append(timed(setup[k], setup["device"]))
    med = statistics.median
    return {k: (med(t for t, _ in v), med(c for _, c in v), [t for t, _ in v]) for k, v in runs.items()}


def _report(title: str, times: dict[str, tuple[float, float, list[float]]], targets: bool = True) -> None:
    print(title)
    for k, (wall, cpu, runs) in times.items():
        print(f"  {k:8s} wall {wall:8.3f} s, cpu {cpu:8.3f} s  (wall runs: {', '.join(f'{t:.3f}' for t in runs)})")
    (wo, co, _), (wm, cm, _), (wf, cf, _) = times["ours"], times["monai"], times["forward"]
    print("                                  wall    cpu")
    print(f"  time ratio ours/monai         {wo / wm:6.3f} {co / cm:6.3f}" + "  (target <= 1.0)" * targets)
    print(f"  tiling overhead ours/forward  {wo / wf:6.3f} {co / cf:6.3f}" + "  (target <= 1.15)" * targets)
    print(f"  monai overhead monai/forward  {wm / wf:6.3f} {cm / cf:6.3f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    ok = True
    for pointwise in ((True,) if args.tiling_only else (False, True)):
        setup = _setup(argv, pointwise)
        device, grid, amp = setup["device"], setup["grid"], setup["amp"]
        what = "tiling alone (pointwise net)" if pointwise else f"model {type(setup['model']).__name__}"
        print(f"== {what}: device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
              f"input (1, {', '.join(map(str, args.size))}), roi {setup['roi']}, overlap {args.overlap}, "
              f"batch {args.batch}, {grid.n_tiles} tiles, amp {amp}", flush=True)
        a, b = setup["ours"](), setup["monai"]()  # warm-up, and the correctness check
        setup["forward"]()
        diff = float(np.abs(a - b).max())
        del a, b
        repeats = max(args.repeats, 5) if pointwise else args.repeats
        # targets apply to a real network; with the pointwise one "forward" is nearly free
        _report("time (median of runs after a warm-up):", _time_all(setup, repeats), targets=not pointwise)
        del setup
        mo, mm = (fresh_peak_memory(argv, which, pointwise) for which in ("ours", "monai"))
        kind = "GPU allocated" if device.type == "cuda" else "RSS growth, fresh process"
        print(f"  peak memory ({kind}): ours {mo / 2**20:.1f} MiB, monai {mm / 2**20:.1f} MiB, "
              f"ratio {mo / max(mm, 1):.3f}")
        print(f"  max abs difference {diff:.3g}" + ("" if amp else "  (must be <= 1e-4)"), flush=True)
        ok = ok and (amp or diff <= 1e-4)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
