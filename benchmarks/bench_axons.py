"""Axon tracing on the same synthetic images, in one run: medloop's DRL tracker (Dai et al.; a start
point, the far end only as a stop rule) against brightest-path-lib's A* and NBA* (the searches
napari-tracing uses, given the start AND the end point), an oracle stepping 3 px along the true
curve and uniform random actions. Coverage (% of true keypoints within 3 px), error (px, lost
stretches left out), time per trace; the tracker's entropy off-track minus on-track (paper +0.91).

    pip install brightest-path-lib     # the benchmark peer (the `bench` extra)
    python benchmarks/bench_axons.py [--count 100] [--presets SI SI-EN] [--tracker axon-tracker-si]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAPER = {"SI": (93.37, 0.64), "SI-RC": (94.13, 0.68), "SI-W": (94.62, 0.39), "SI-EN": (96.18, 0.53), "SI-SN": (94.72, 0.59)}


def brightest_path(image: np.ndarray, start: np.ndarray, end: np.ndarray, kind: str) -> np.ndarray:
    """brightest-path-lib's search from ``start`` to ``end`` (integer pixels, as it takes them)."""
    from brightest_path_lib.algorithm import AStarSearch, NBAStarSearch

    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the library prints on every search
        search = (AStarSearch if kind == "A*" else NBAStarSearch)(
            image, np.round(start).astype(int), np.round(end).astype(int))
        return np.asarray(search.search(), float)


def oracle_and_random(axons, max_steps: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    from medloop.plugins.axons.env import AxonEnv, EnvConfig, drive, episode_from_axon
    from medloop.plugins.axons.geometry import point_at, project

    out = {}
    rng = np.random.default_rng(seed)

    def oracle(env, idx):
        moves = []
        for i in idx:
            curve = env.episodes[i].centreline
            s = project(env.pos[i][None], curve)[1][0]
            moves.append(point_at(curve, np.array(s + 3.0)) - env.pos[i])
        return np.array(moves), None

    for name, policy in (("oracle", oracle), ("random", lambda env, idx: (rng.uniform(-4, 4, (len(idx), 2)), None))):
        env = AxonEnv([episode_from_axon(a) for a in axons], EnvConfig(max_steps=max_steps))
        drive(env, policy)
        out[name] = [env.path(i) for i in range(len(axons))]
    return out


def run_preset(preset: str, count: int, size: int, seed: int, actor, max_steps: int) -> None:
    from medloop.plugins.axons.metrics import evaluate_trace, summarise
    from medloop.plugins.axons.synth import make_batch
    from medloop.plugins.axons.trace import trace

    axons = make_batch(count, size, preset, seed)
    rows: dict[str, tuple[dict, float]] = {}
    t0 = time.perf_counter()
    ours = [trace(a.image, a.start[None], actor, max_steps=max_steps, end_points=a.end[None])[0] for a in axons]
    per_trace = (time.perf_counter() - t0) / count
    scores = [evaluate_trace(t.vertices, a.centreline, t.entropy) for t, a in zip(ours, axons)]
    rows["medloop DRL (start only)"] = (summarise(scores), per_trace)
    for kind in ("A*", "NBA*"):
        t0 = time.perf_counter()
        paths = [brightest_path(a.image, a.start, a.end, kind) for a in axons]
        per = (time.perf_counter() - t0) / count
        rows[f"brightest-path-lib {kind} (start + end)"] = (summarise([evaluate_trace(p, a.centreline) for p, a in zip(paths, axons)]), per)
    for name, paths in oracle_and_random(axons, max_steps).items():
        rows[name] = (summarise([evaluate_trace(p, a.centreline) for p, a in zip(paths, axons)]), float("nan"))
    on = np.concatenate([s.entropy_on for s in scores]) if scores else np.zeros(0)
    off = np.concatenate([s.entropy_off for s in scores]) if scores else np.zeros(0)
    paper = PAPER.get(preset)
    print(f"\n{preset}: {count} images {size}x{size}, seed {seed}; paper (full scale) {paper[0]} % / {paper[1]} px")
    print(f"{'method':40s} {'coverage %':>10s} {'error px':>9s} {'lost':>5s} {'ms/trace':>9s}")
    for name, (s, sec) in rows.items():
        print(f"{name:40s} {s['coverage']:10.2f} {s['error']:9.3f} {s['lost']:5.0f} {sec * 1000:9.1f}")
    if len(on) and len(off):
        print(f"tracker entropy: on-track {on.mean():.3f} ({len(on)} steps), off-track {off.mean():.3f} ({len(off)} steps), "
              f"off - on {off.mean() - on.mean():+.3f} (paper +0.91)")
    elif len(on):
        print(f"tracker entropy: on-track {on.mean():.3f} ({len(on)} steps); no step was off-track (>= 3 px)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--presets", nargs="+", default=["SI", "SI-EN"])
    parser.add_argument("--tracker", default="axon-tracker-si")
    args = parser.parse_args(argv)
    import torch

    from medloop.plugins.axons.tracker import load_tracker

    torch.set_num_threads(1)
    actor = load_tracker(args.tracker).actor
    for preset in args.presets:
        run_preset(preset, args.count, args.size, args.seed, actor, args.max_steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
