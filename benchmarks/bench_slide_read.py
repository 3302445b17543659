"""Benchmark: random 512^2 level-0 regions of a JPEG tiled pyramidal TIFF, medloop vs OpenSlide.

    .venv/bin/python benchmarks/bench_slide_read.py [--size 20000] [--regions 50] [--repeats 5]

Writes (once, into a temporary folder) a ``size`` x ``size`` JPEG-compressed, 256^2-tiled
pyramidal TIFF with tissue-like texture, then reads ``regions`` random 512^2 level-0 regions,
repeats interleaved (the order alternates), each repeat with new regions, with the slide opened
once per path:

* medloop ``read_region`` (tifffile's zarr store; only the touched tiles are decoded);
* ``OpenSlide.read_region`` as a numpy array;
* medloop's dask pyramid as read today through tifffile (``read_image(path).array[...]`` compute);
* the old dask pyramid through OpenSlide (``read_image`` with the tifffile reader switched off).

Prints the median ms per region, the ratio to OpenSlide (goal <= 0.8) and each path's memory
growth (resident set after opening and reading the regions minus before; and the peak's growth),
measured in a fresh interpreter per path.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOAL = 0.8
SIDE = 512


def texture(y0: int, x0: int, h: int, w: int, step: int) -> np.ndarray:
    """Tissue-like RGB at level-0 rows y0 + step * i, columns x0 + step * j: smooth stain
    blobs, nuclei-sized dots and a little noise (a fixed function of the coordinates)."""
    ys = (y0 + step * np.arange(h, dtype=np.float32))[:, None]
    xs = (x0 + step * np.arange(w, dtype=np.float32))[None, :]
    blob = np.sin(ys / 900.0) * np.cos(xs / 700.0) + 0.5 * np.sin((xs + ys) / 2300.0)
    dots = (np.sin(ys / 9.0) * np.sin(xs / 11.0) > 0.85).astype(np.float32)
    noise = np.random.default_rng(int(y0 * 7919 + x0 * 31 + step)).normal(0, 6, (h, w)).astype(np.float32)
    r = 215 - 40 * blob - 90 * dots + noise
    g = 160 - 60 * blob - 100 * dots + noise
    b = 200 - 20 * blob - 40 * dots + noise
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def write_jpeg_slide(path: Path, size: int, tile: int = 256) -> None:
    """A size x size JPEG tiled pyramidal TIFF, tile by tile; level k is 2**k smaller, down to
    about 1024 pixels (reduced levels are NewSubfileType pages, which OpenSlide reads)."""
    import tifffile

    shapes = [(size, size)]
    while max(shapes[-1]) > 1024:
        shapes.append((-(-shapes[-1][0] // 2), -(-shapes[-1][1] // 2)))

    def tiles(level: int, h: int, w: int):
        for ty in range(0, h, tile):
            for tx in range(0, w, tile):
                yield texture(ty * 2**level, tx * 2**level, tile, tile, 2**level)

    with tifffile.TiffWriter(path, bigtiff=3 * size * size > 2**31) as tw:
        for k, (h, w) in enumerate(shapes):
            tw.write(tiles(k, h, w), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile),
                     compression="jpeg", compressionargs={"level": 90}, photometric="rgb", subfiletype=1 if k else 0,
                     resolution=(1e4 / (0.25 * 2**k),) * 2, resolutionunit="CENTIMETER", metadata=None)


# Each case: open(path) -> state; read(state, y, x) -> region.


def _medloop_open(path: Path):
    from medloop.app.io.slide import read_slide

    return read_slide(path)


def _medloop_read(image, y: int, x: int) -> np.ndarray:
    from medloop.app.io.slide import read_region

    return read_region(image, 0, y, x, SIDE, SIDE)


def _openslide_open(path: Path):
    import openslide

    return openslide.OpenSlide(str(path))


def _openslide_read(slide, y: int, x: int) -> np.ndarray:
    return np.asarray(slide.read_region((x, y), 0, (SIDE, SIDE)))


def _dask_open(path: Path):
    from medloop import read_image

    return read_image(path)


def _old_dask_open(path: Path):
    from medloop.app.io import slide_tiff

    original = slide_tiff.open_tiff_levels
    slide_tiff.open_tiff_levels = lambda *args: None  # the reader before tifffile: OpenSlide only
    try:
        return _dask_open(path)
    finally:
        slide_tiff.open_tiff_levels = original


def _dask_read(image, y: int, x: int) -> np.ndarray:
    return image.array[y : y + SIDE, x : x + SIDE].compute()


CASES = {
    "medloop read_region (tifffile)": (_medloop_open, _medloop_read),
    "openslide read_region + array": (_openslide_open, _openslide_read),
    "medloop dask pyramid (tifffile)": (_dask_open, _dask_read),
    "old dask pyramid (openslide)": (_old_dask_open, _dask_read),
}
BASE = "openslide read_region + array"
CASES_FIRST = "medloop read_region (tifffile)"


def regions(size: int, n: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(0, size - SIDE)), int(rng.integers(0, size - SIDE))) for _ in range(n)]


def time_cases(path: Path, size: int, n: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per region of each repeat, per case; repeats interleaved, order alternating."""
    states = {name: open_(path) for name, (open_, _) in CASES.items()}
    for name, (_, read) in CASES.items():  # warm imports and the page cache
        for y, x in regions(size, 3, 999):
            read(states[name], y, x)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for i in range(repeats):
        places = regions(size, n, i)
        order = list(CASES.items())
        if i % 2:
            order.reverse()
        for name, (_, read) in order:
            gc.collect()
            t = time.perf_counter()
            for y, x in places:
                read(states[name], y, x)
            times[name].append((time.perf_counter() - t) / n)
    return times


def memory_growth(path: Path, case: str, size: int, n: int) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "--measure", case, "--path", str(path), "--size", str(size), "--regions", str(n)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _measure(case: str, path: Path, size: int, n: int) -> None:
    """Open the slide and read n regions in this fresh interpreter; print the RSS growth (Linux)."""
    import dask.array  # noqa: F401
    import openslide  # noqa: F401
    import tifffile  # noqa: F401
    import zarr  # noqa: F401

    import medloop.app.io.slide  # noqa: F401
    import medloop.app.io.slide_tiff  # noqa: F401

    open_, read = CASES[case]
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak to the current size
        f.write("5")
    base = _status_mb("VmRSS")
    state = open_(path)
    for y, x in regions(size, n, 0):
        read(state, y, x)
    gc.collect()
    print(json.dumps({"rss_growth_mb": _status_mb("VmRSS") - base, "peak_growth_mb": _status_mb("VmHWM") - base}))


def agreement(path: Path, size: int) -> float:
    """Largest mean absolute difference, over a few regions, between medloop's and OpenSlide's RGB."""
    image, slide = _medloop_open(path), _openslide_open(path)
    worst = 0.0
    for y, x in regions(size, 5, 123):
        ours = _medloop_read(image, y, x).astype(np.int16)
        theirs = _openslide_read(slide, y, x)[..., :3].astype(np.int16)
        worst = max(worst, float(np.abs(ours - theirs).mean()))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="level-0 side of the synthetic slide")
    parser.add_argument("--regions", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--measure", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.measure:
        _measure(args.measure, args.path, args.size, args.regions)
        return 0
    with tempfile.TemporaryDirectory(prefix="medloop-bench-read-") as folder:
        path = Path(folder) / f"jpeg-{args.size}.tif"
        t = time.perf_counter()
        write_jpeg_slide(path, args.size)
        print(f"wrote {path.name} ({path.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - t:.1f} s")
        report(path, args)
    return 0


def report(path: Path, args: argparse.Namespace) -> None:
    from medloop.app.io.slide import _tasks_of, read_slide

    reader = type(_tasks_of(read_slide(path).pyramid[0]).handle).__name__
    times = time_cases(path, args.size, args.regions, args.repeats)
    memory = {name: memory_growth(path, name, args.size, args.regions) for name in CASES}
    print(f"\n{args.size}^2 JPEG tiled pyramidal TIFF (256^2 tiles), medloop reader: {reader}")
    print(f"{args.regions} random {SIDE}^2 level-0 regions x {args.repeats} interleaved repeats\n")
    print(f"{'path':34s} {'median ms/region':>17s} {'x openslide':>12s} {'RSS growth MB':>14s} {'peak growth MB':>15s}")
    base = statistics.median(times[BASE])
    for name in CASES:
        med = statistics.median(times[name])
        mem = memory[name]
        print(f"{name:34s} {med * 1e3:17.2f} {med / base:12.2f} {mem['rss_growth_mb']:14.1f} {mem['peak_growth_mb']:15.1f}")
    ratio = statistics.median(times[CASES_FIRST]) / base
    ok_time = "met" if ratio <= GOAL else "NOT met"
    ok_mem = "met" if memory[CASES_FIRST]["rss_growth_mb"] <= memory[BASE]["rss_growth_mb"] else "NOT met"
    print(f"\nmedloop read_region / openslide: {ratio:.2f} (goal <= {GOAL}: {ok_time}); "
          f"memory growth <= openslide's: {ok_mem}")
    print(f"largest mean |medloop - openslide| over 5 regions (JPEG decoders): {agreement(path, args.size):.3f}")


if __name__ == "__main__":
    sys.exit(main())
