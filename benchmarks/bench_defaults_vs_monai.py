"""medloop's defaults against MONAI's on the packaged sample (issue #20 §6): the time of
``segment()`` end to end with medloop's defaults (every core, ``--precision auto``, channels-last)
and in fp32 on one thread, against MONAI's ``SliceInferer`` (a 2-D model over a volume slice by
slice, MONAI's defaults: fp32, sliding-window batch 1, overlap 0.25, torch's default threads)
over the same network input, one model per packaged 2-D brain model. Medians of ``--repeats``
interleaved runs after a warm-up; wall and process CPU time; label agreement of the defaults with
medloop's fp32 result (goal >= 99.9 %); goal: medloop's defaults <= 0.6 x MONAI's wall time.

    pip install --no-deps "monai>=1.3"      # a benchmark-only peer
    python benchmarks/bench_defaults_vs_monai.py            # both brain models (~3 min)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(fn) -> tuple[float, float, object]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def arms(model: str, image):
    """The three timed callables for ``model`` on ``image``."""
    from monai.inferers import SliceInferer

    from medloop.app.engine.resample import to_model_grid
    from medloop.models.inputs import network_input
    from medloop.models.registry import build_model, get_model
    from medloop.plugins.segmentation.method import SegmentParams, _model_spacing, segment

    entry = get_model(model)
    network = build_model(entry).eval()
    card = entry.card
    grid = to_model_grid(image, _model_spacing(card, image, True), card.orientation)
    x = torch.from_numpy(np.ascontiguousarray(network_input(grid, card)))[None]  # (1, C, z, y, x)
    roi = tuple(card.inference.get("roi_size") or grid.shape[1:])[-2:]
    inferer = SliceInferer(roi_size=roi, sw_batch_size=1, spatial_dim=0, overlap=0.25)

    def monai_default():
        with torch.inference_mode():
            return inferer(x, network).argmax(1)[0].numpy()

    def ours_default():
        return segment(image, SegmentParams(model=model), network=network)

    def ours_fp32_one_thread():
        return segment(image, SegmentParams(model=model, precision="fp32", num_threads=1), network=network)

    return {"medloop defaults": ours_default, "medloop fp32, 1 thread": ours_fp32_one_thread, "MONAI defaults": monai_default}


def run(model: str, image, repeats: int) -> None:
    calls = arms(model, image)
    first = {name: fn() for name, fn in calls.items()}  # warm-up (and the precision check, cached)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            wall, cpu, _ = timed(fn)
            times[name].append((wall, cpu))
    default, exact = first["medloop defaults"], first["medloop fp32, 1 thread"]
    agree = float((np.asarray(default.labels.array) == np.asarray(exact.labels.array)).mean())
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    mw, mc = med["MONAI defaults"]
    print(f"\n{model}: precision chosen {default.provenance['precision']} ({default.provenance['precision_reason']}); "
          f"torch threads by default {torch.get_num_threads()}")
    for name, (w, c) in med.items():
        print(f"  {name:24s} wall {w:6.3f} s ({w / mw:5.2f}x MONAI)   cpu {c:6.3f} s ({c / mc:5.2f}x)")
    print(f"  labels of the defaults agreeing with fp32: {100 * agree:.3f} % (goal >= 99.9 %)")
    print(f"  goal medloop defaults <= 0.6 x MONAI wall: {'met' if med['medloop defaults'][0] <= 0.6 * mw else 'not met'}")


def main() -> int:
    from medloop.app.samples import load_brain_sample

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["brain-tissue", "brain-tissue-t1"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    image, _ = load_brain_sample()
    for model in args.models:
        run(model, image, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
