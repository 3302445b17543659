"""CPU networks in channels-last layout (what ``segment()`` and ``train_segmentation`` do) against
the default contiguous layout, in the same run, one torch thread.

Rows: ``segment()`` of the packaged 2 mm brain sample with ``brain-tissue-t1`` (2-D U-Net run slice
by slice), the same with seed 000 upscaling z x3, a 3-D U-Net (8-64 features) on a 96^3 volume,
and 30 training steps of each network. The peer is the same call with the layout switch turned
off; the labels must agree (float rounding may flip a voxel at an exact tie).

    python benchmarks/bench_cpu_layout.py            # ~2 min
    python benchmarks/bench_cpu_layout.py --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median_time(fn, repeats: int) -> tuple[object, float]:
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


@contextlib.contextmanager
def contiguous_only():
    """Turn the layout switch off: the peer."""
    from medloop.app.engine import devices

    original = devices.channels_last_on_cpu
    devices.channels_last_on_cpu = lambda *modules: contextlib.nullcontext()
    try:
        yield
    finally:
        devices.channels_last_on_cpu = original


def compare(name: str, fn, repeats: int, same) -> dict:
    fn()  # warm-up (oneDNN primitive caches)
    with contiguous_only():
        fn()
        base, t_base = _median_time(fn, repeats)
    ours, t_ours = _median_time(fn, repeats)
    agree = same(base, ours)
    print(f"  {name:48s} contiguous {t_base:7.3f} s | channels-last {t_ours:7.3f} s | {t_base / t_ours:.2f}x faster | {agree}")
    return {"case": name, "contiguous_s": t_base, "channels_last_s": t_ours, "speedup": t_base / t_ours}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    import tempfile

    import torch

    from medloop.app.engine.train import TrainConfig, train_segmentation
    from medloop.app.io.image import MedImage
    from medloop.app.samples import load_brain_sample
    from medloop.models.nets import build_network
    from medloop.models.registry import build_model, get_model
    from medloop.plugins.segmentation.method import SegmentParams, segment

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_upscale import register_card

    torch.set_num_threads(1)

    def labels_agree(a, b) -> str:
        x, y = np.asarray(a.labels.array), np.asarray(b.labels.array)
        return f"labels differ in {int((x != y).sum())} of {x.size} voxels"

    print("CPU layout, one torch thread")
    t1, _ = load_brain_sample()
    entry = get_model("brain-tissue-t1")
    brain = build_model(entry, "cpu")
    rows = [
        compare("segment(): brain 2 mm, 2-D U-Net slice by slice",
                lambda: segment(t1, SegmentParams(model=entry.name, device="cpu"), network=brain), args.repeats, labels_agree),
        compare("segment(): the same, upscale z x3",
                lambda: segment(t1, SegmentParams(model=entry.name, device="cpu", upscale=(3, 1, 1)), network=brain),
                args.repeats, labels_agree),
    ]
    kwargs3 = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "features": [8, 16, 32, 64], "norm": "group"}
    torch.manual_seed(0)
    net3 = build_network("unet3d", **kwargs3).eval()
    volume = MedImage.from_array(np.random.default_rng(0).random((96, 96, 96), dtype=np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        register_card(Path(tmp), "unet3d-timing", {"name": "unet3d", "kwargs": kwargs3}, "bczyx")
        rows.append(compare("segment(): 3-D U-Net on 96^3 (random weights)",
                            lambda: segment(volume, SegmentParams(model="unet3d-timing", models_dir=Path(tmp), device="cpu",
                                                                  roi_size=(96, 96, 96)), network=net3),
                            args.repeats, labels_agree))

    def training(network_fn, pairs, patch):
        config = TrainConfig(epochs=1, steps_per_epoch=30, batch_size=4, patch_size=patch, lr=1e-3, num_threads=1)

        def run():
            torch.manual_seed(0)  # the same initial weights for both layouts
            return train_segmentation(network_fn(), pairs, None, config)

        return run

    def losses_agree(a, b) -> str:
        la, lb = a.history[-1]["train_loss"], b.history[-1]["train_loss"]
        return f"last epoch loss {la:.4f} vs {lb:.4f}"

    rng = np.random.default_rng(1)
    pairs2 = [(rng.random((1, 128, 128), dtype=np.float32), (rng.random((128, 128)) > 0.5).astype(np.int64), None)]
    pairs3 = [(rng.random((1, 48, 48, 48), dtype=np.float32), (rng.random((48, 48, 48)) > 0.5).astype(np.int64), None)]
    arch2 = entry.card.architecture[1]
    rows.append(compare("training: brain 2-D U-Net, 30 steps of 4 x 96^2",
                        training(lambda: build_network("unet2d", **arch2), pairs2, (96, 96)), args.repeats, losses_agree))
    rows.append(compare("training: 3-D U-Net, 30 steps of 4 x 32^3",
                        training(lambda: build_network("unet3d", **kwargs3), pairs3, (32, 32, 32)), args.repeats, losses_agree))
    return 0 if all(r["speedup"] > 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
