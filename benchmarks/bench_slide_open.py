"""Benchmark: open a whole slide and read the first displayed tile, medloop vs OpenSlide.

    .venv/bin/python benchmarks/bench_slide_open.py [--size 40000] [--repeats 21] [--folder DIR]

Builds (or reuses) a synthetic 40000 x 40000 slide, then times, with a fresh open each time,

* medloop: ``read_slide(path)`` (the whole lazy pyramid) + computing the lowest-resolution
  level's first 512^2 chunk, which is what napari displays first;
* OpenSlide: ``OpenSlide(path).read_region((0, 0), lowest, (512, 512))`` as a numpy array
  (and, for reference, without the array conversion, and medloop with dask's synchronous
  scheduler, which shows the cost of handing one task to dask's thread pool),

and prints the medians, the ratio (target <= 1.2) and each path's peak extra memory, measured
in a fresh subprocess as the growth of the peak resident set.
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
TARGET_RATIO = 1.2


# Each returns (tile, what keeps the slide open), so closing is not part of the timing.


def medloop_first_tile(path: Path) -> tuple[np.ndarray, object]:
    from medloop.app.io.slide import read_slide

    image = read_slide(path)
    return image.pyramid[-1][:512, :512].compute(), image


def medloop_first_tile_sync(path: Path) -> tuple[np.ndarray, object]:
    from medloop.app.io.slide import read_slide

    image = read_slide(path)
    return image.pyramid[-1][:512, :512].compute(scheduler="sync"), image


def openslide_first_tile(path: Path) -> tuple[np.ndarray, object]:
    import openslide

    slide = openslide.OpenSlide(str(path))
    return np.asarray(slide.read_region((0, 0), slide.level_count - 1, (512, 512))), slide


def openslide_first_tile_pil(path: Path) -> tuple[object, object]:
    import openslide

    slide = openslide.OpenSlide(str(path))
    return slide.read_region((0, 0), slide.level_count - 1, (512, 512)), slide


CASES = {
    "medloop read_slide + compute": medloop_first_tile,
    "medloop, dask sync scheduler": medloop_first_tile_sync,
    "openslide read_region + array": openslide_first_tile,
    "openslide read_region (PIL only)": openslide_first_tile_pil,
}


def build_slide(folder: Path, size: int) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.app.io.slide_synth import write_synthetic_slide

    path = folder / f"medloop-bench-slide-{size}.svs"
    if not path.exists():
        t = time.perf_counter()
        tmp = path.with_name(f".{path.name}.tmp.svs")
        write_synthetic_slide(tmp, size=(size, size), pattern="blocks", seed=0)
        tmp.replace(path)
        print(f"built {path} ({path.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - t:.1f} s")
    return path


def time_cases(path: Path, repeats: int) -> dict[str, list[float]]:
    import dask.array  # noqa: F401 (napari has it imported already; not part of the open)

    times: dict[str, list[float]] = {name: [] for name in CASES}
    for fn in CASES.values():  # warm the page cache and imports
        fn(path)
    gc.disable()  # collections happen between runs, not inside one
    try:
        for i in range(repeats):
            order = list(CASES.items())
            if i % 2:
                order.reverse()  # alternate, so drift affects all alike
            for name, fn in order:
                t = time.perf_counter()
                kept = fn(path)
                times[name].append(time.perf_counter() - t)
                del kept  # close the slide outside the timed region
                gc.collect()
    finally:
        gc.enable()
    return times


def peak_memory_mb(path: Path, case: str) -> float:
    """Peak extra resident memory of one open + first tile, in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, __file__, "--measure", case, "--path", str(path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_extra_mb"])


def _measure(case: str, path: Path) -> None:
    import dask.array  # noqa: F401
    import openslide  # noqa: F401
    import tifffile.zarr  # noqa: F401 (the TIFF-family reader: a one-time import, not
    import zarr  # noqa: F401           part of opening a slide)

    import medloop.app.io.slide  # noqa: F401
    import medloop.app.io.slide_tiff  # noqa: F401

    def status_mb(field: str) -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        raise KeyError(field)

    if sys.platform.startswith("linux"):
        with open("/proc/self/clear_refs", "w") as f:  # reset the peak to the current size
            f.write("5")
        base = status_mb("VmRSS")
        CASES[case](path)
        peak = status_mb("VmHWM") - base
    else:
        import resource

        scale = 2**20 if sys.platform == "darwin" else 1024
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
        CASES[case](path)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale - base
    print(json.dumps({"peak_extra_mb": peak}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=40000, help="level-0 side of the synthetic slide")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument(
        "--folder", type=Path, default=Path(tempfile.gettempdir()), help="where the slide is built or reused"
    )
    parser.add_argument("--slide", type=Path, help="benchmark this slide instead of a synthetic one")
    parser.add_argument("--measure", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.measure:
        _measure(args.measure, args.path)
        return 0

    path = args.slide or build_slide(args.folder, args.size)
    ours, theirs = medloop_first_tile(path)[0], openslide_first_tile(path)[0]
    same = np.array_equal(ours, theirs[..., :3]) and bool((theirs[..., 3] == 255).all())
    times = time_cases(path, args.repeats)
    peaks = {name: peak_memory_mb(path, name) for name in CASES}

    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        dims = slide.level_dimensions
    (w0, h0), (wl, hl) = dims[0], dims[-1]
    print(f"\nslide: {path} - level 0 {w0}x{h0}, {len(dims)} levels, lowest {wl}x{hl}")
    print(f"open + first 512^2 tile of the lowest level, fresh open each time, {args.repeats} repeats\n")
    print(f"{'path':34s} {'median ms':>10s} {'min ms':>8s} {'peak extra MB':>14s}")
    for name in CASES:
        ts = times[name]
        print(f"{name:34s} {statistics.median(ts) * 1e3:10.2f} {min(ts) * 1e3:8.2f} {peaks[name]:14.1f}")
    base = "openslide read_region + array"
    ratio = statistics.median(times["medloop read_slide + compute"]) / statistics.median(times[base])
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(f"\nratio medloop / openslide (read_region + array): {ratio:.2f}" f" (target <= {TARGET_RATIO}: {verdict})")
    ratio_pil = statistics.median(times["medloop read_slide + compute"]) / statistics.median(
        times["openslide read_region (PIL only)"]
    )
    print(f"ratio medloop / openslide (PIL image only):       {ratio_pil:.2f}")
    ratio_sync = statistics.median(times["medloop, dask sync scheduler"]) / statistics.median(times[base])
    print(f"ratio medloop (sync scheduler) / openslide:       {ratio_sync:.2f}")
    print(f"same pixels: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
