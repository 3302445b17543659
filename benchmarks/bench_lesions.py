"""Lesion synthesis and anomaly maps at CPU scale, one run (spec §1, §3; issue #17's benchmarks).

1. Latency: box → lesion with the packaged translator and filter on a 256 x 256 radiograph
   (model loaded once, as the panel does when it opens; goal < 2 s), the first call including
   the model load, and the anomaly map of a 256 x 256 slice.
2. Gupta et al.: paired-bootstrap ΔAUC of the augmented classifier (validation-chosen t) against
   the baseline, beside the identity-paste control, kept counts per t; ≥ 3 seeds, with the
   packaged UNIT translator and the oracle (the phantom's own lesion model: the ceiling).
3. Baur et al.: UAD Dice / AUPRC, the no-GDL ablation, pseudo-label Dice, student vs teacher,
   the domain-shift toy (``bench_lesions_anomaly.py``).

    .venv/bin/python benchmarks/bench_lesions.py                 # everything (about 1 h on 2 cores)
    .venv/bin/python benchmarks/bench_lesions.py --only latency   # seconds
    .venv/bin/python benchmarks/bench_lesions.py --only gupta --seeds 0 1 2 --translator unit oracle
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def latency(repeats: int = 5) -> None:
    import torch

    from medloop.plugins.lesions.phantoms import make_phantom
    from medloop.plugins.lesions.synthesize import SynthesisParams, synthesize_lesions
    from medloop.plugins.lesions.zoo import load_lesion_model

    torch.set_num_threads(1)  # the panel's worker shares the machine with the GUI
    bone = make_phantom("bone", 4, with_lesion=False, shape=(256, 256)).image
    box = (112, 100, 140, 128)
    started = time.perf_counter()
    translator = load_lesion_model("lesion-unit-bone", "translator").translator()
    scorer = load_lesion_model("lesion-classifier-bone", "classifier").scorer()
    first = synthesize_lesions(bone, [box], translator, SynthesisParams(seed=0, threshold=0.5), scorer)
    cold = time.perf_counter() - started
    times = []
    for k in range(repeats):
        started = time.perf_counter()
        synthesize_lesions(bone, [box], translator, SynthesisParams(seed=k, threshold=0.5), scorer)
        times.append(time.perf_counter() - started)
    print(f"box -> lesion at 256 x 256 (translator + filter, 1 thread): {np.median(times) * 1000:.0f} ms median of "
          f"{repeats} (goal < 2000 ms); first call with model load {cold * 1000:.0f} ms; score {first.score:.3f}")
    anomaly = load_lesion_model("lesion-anomaly-brain", "anomaly")
    brain = np.kron(make_phantom("brain", 3).image, np.ones((4, 4), np.float32))
    anomaly.anomaly_map(brain)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        anomaly.anomaly_map(brain)
        times.append(time.perf_counter() - started)
    print(f"anomaly map of a 256 x 256 slice: {np.median(times) * 1000:.0f} ms median of {repeats}")


def gupta(seeds: list[int], translators: list[str], small: bool) -> None:
    for name in translators:
        command = [sys.executable, str(HERE / "bench_lesions_gupta.py"), "--seeds", *map(str, seeds), "--translator", name]
        subprocess.run(command + (["--small"] if small else []), check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("latency", "gupta", "anomaly"), default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--translator", nargs="+", default=["unit", "oracle"], help="unit (trained per run) and/or oracle")
    ap.add_argument("--small", action="store_true", help="smaller Gupta sets and anomaly preset (quicker)")
    args = ap.parse_args()
    if args.only in (None, "latency"):
        latency()
    if args.only in (None, "gupta"):
        gupta(args.seeds, args.translator, args.small)
    if args.only in (None, "anomaly"):
        extra = ["--quick"] if args.small else []
        subprocess.run([sys.executable, str(HERE / "bench_lesions_anomaly.py"), "--seeds", str(len(args.seeds)), *extra], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
