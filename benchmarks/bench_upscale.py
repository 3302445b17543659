"""Seed 000 output upscaling against interpolating the low-resolution result, with ground truth.

The paper (Pellicer-Valero et al.) had no ground truth for its upscaled masks; here we have one.
The MNI152 2009 T1 at 1 mm with grey/white-matter labels from its tissue maps (nilearn's package
data, as ``scripts/make_sample.py`` makes the packaged 2 mm sample; ``--resolution 2`` uses the
packaged sample and needs no nilearn) is the high-resolution truth. Its thick-slice version
averages every 3 consecutive axial slices (3 mm slices at 1 mm, centred on the middle one:
partial volume as a thick-slice acquisition has it). The packaged model
``brain-tissue-t1`` segments the thick volume on its own grid, and the 2 mm result is made by

(a) seed 000: ``segment(..., upscale=(k, 1, 1))`` -- sub-slice shifted copies of the thick
    volume through the model, interleaved (also: the paper's "start" alignment, and the
    overlapping variant fused by mean and by vote);
(b) nearest-neighbour upsampling of the 6 mm label map;
(c) linear upsampling of the 6 mm class probabilities, then argmax;

each compared with the truth on the slices the thick volume covers: Dice and HD95 (mm)
for grey and white matter. Timing: each strategy's wall time relative to the plain
segmentation of the thick volume (median of ``--repeats`` runs, one torch thread); a second
timing table runs 4 shifted copies of n x n 2-D images (n = 64 ... 512) against one plain pass.

HD95 there measures mostly the model's own errors, which every strategy shares: the row "model
on the real thin slices" (the same model on the 1 mm volume itself) is the ceiling. So two more
tables take the model's errors out: a smooth random phantom (1 mm, soft edges, known truth),
thick-sliced the same way and segmented through ``segment()`` like any registry model by
(1) an ideal model, a threshold at 0.5 (truth = what it says on the thin slices), and
(2) a learned 2-D U-Net, trained here in ~1 min on three other phantoms with noise (SD 0.08),
on a noisy test phantom.

    python benchmarks/bench_upscale.py                   # 1 mm truth (nilearn), a few minutes
    python benchmarks/bench_upscale.py --resolution 2    # the packaged 2 mm sample, ~1 min
    python benchmarks/bench_upscale.py --json /tmp/upscale.json
    python benchmarks/bench_upscale.py --phantom-only   # the phantom tables alone, ~2 min
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def thick_slices(image, k: int = 3):
    """Average every ``k`` consecutive slices along z; the thick slice sits at their centre."""
    from dataclasses import replace

    arr = np.asarray(image.array, dtype=np.float32)
    n = arr.shape[0] // k
    thick = arr[: n * k].reshape(n, k, *arr.shape[1:]).mean(axis=1)
    centre = image.index_to_physical(np.array([0.0, 0.0, (k - 1) / 2]))
    return replace(image, array=thick, spacing=(image.spacing[0], image.spacing[1], image.spacing[2] * k),
                   origin=tuple(centre), pyramid=())


def labels_onto(values, source, target) -> np.ndarray:
    """A label map on ``source``'s grid resampled onto ``target``'s grid (physical space,
    nearest neighbour)."""
    import SimpleITK as sitk

    from medloop.app.io.sitk_convert import to_sitk

    moving = to_sitk(source.with_array(np.ascontiguousarray(values, dtype=np.float32)))
    reference = to_sitk(target.with_array(np.zeros(target.shape[: target.ndim], np.uint8)))
    return sitk.GetArrayFromImage(sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0))


def scores(pred: np.ndarray, truth: np.ndarray, spacing, classes=((1, "gm"), (2, "wm"))) -> dict[str, float]:
    """Dice, HD95 and the average symmetric surface distance (ASSD: HD95 on a 1 mm grid moves in
    steps of sqrt(integer) mm, so ties are common; the mean separates them)."""
    from medloop.app.engine.metrics import dice_per_class, hausdorff95, surface_distances

    dice = dice_per_class(pred, truth, max(c for c, _ in classes) + 1)
    out = {}
    for c, name in classes:
        out[f"dice_{name}"] = dice[c]
        out[f"hd95_{name}"] = hausdorff95(pred == c, truth == c, spacing)
        d1, d2 = surface_distances(pred == c, truth == c, spacing)
        out[f"assd_{name}"] = float(np.concatenate([d1, d2]).mean())
    return out


def nearest_and_linear(plain, grid, n_fine: int) -> tuple[np.ndarray, np.ndarray]:
    """(b) the plain result's labels and (c) its probabilities, linearly, onto ``grid`` (the
    resampling ``segment()`` uses; outside the thick extent: background)."""
    from medloop.app.engine.resample import probabilities_to_grid

    nn = labels_onto(plain.labels.array, plain.labels, grid)[:n_fine].astype(np.int64)
    probs = np.moveaxis(np.asarray(plain.probabilities.array), -1, 0)
    lin = probabilities_to_grid(probs, plain.labels, grid)
    return nn, lin.argmax(axis=0)[:n_fine]


def verdict(rows: list[dict], names: tuple[str, ...]) -> tuple[bool, bool, bool, bool]:
    """Seed 000 (first row) vs nearest neighbour: Dice higher, HD95 not higher, HD95 lower,
    ASSD lower -- for every class in ``names``."""
    a, b = rows[0], next(r for r in rows if r["strategy"].startswith("(b)"))
    return (all(a[f"dice_{n}"] > b[f"dice_{n}"] for n in names), all(a[f"hd95_{n}"] <= b[f"hd95_{n}"] for n in names),
            all(a[f"hd95_{n}"] < b[f"hd95_{n}"] for n in names), all(a[f"assd_{n}"] < b[f"assd_{n}"] for n in names))


def register_card(folder: Path, name: str, architecture: dict, axes: str, extra_medical: dict | None = None) -> None:
    """A temporary card for a benchmark model (its network is passed to ``segment()`` directly)."""
    card = {
        "name": name, "version": "1", "description": "Benchmark model.", "authors": [{"name": "benchmark"}],
        "license": "BSD-3-Clause", "architecture": architecture, "weights": {"source": "weights.pt", "sha256": "0" * 64},
        "inputs": [{"name": "image", "axes": axes, "channels": 1, "preprocessing": {"name": "none"}}],
        "outputs": [{"name": "probabilities", "axes": axes}],
        "inference": {"roi_size": [96] * (len(axes) - 2), "overlap": 0.25},
        "medical": {"modality": "synthetic", "classes": {"0": "background", "1": "inside"}, "not_for_diagnosis": "benchmark only",
                    **(extra_medical or {})},
    }
    (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / name / "card.json").write_text(json.dumps(card), encoding="utf-8")


def ideal_model(folder: Path):
    """Foreground exactly where the intensity is above 0.5: a 1x1x1 convolution with logits
    (0, 50 (x - 0.5)), registered under a temporary card."""
    import torch

    net = torch.nn.Conv3d(1, 2, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[1] = 50.0
        net.bias.copy_(torch.tensor([0.0, -25.0]))
    net.divisible_by = 1
    register_card(folder, "ideal-threshold", {"name": "unet3d", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "features": [4, 8]}}, "bczyx")
    return "ideal-threshold", net


def learned_model(folder: Path, epochs: int = 40):
    """A 2-D U-Net (8-16-32, run slice by slice) trained on three other noisy phantoms: their thin
    slices and, for every other slice, the mean of it and its two neighbours (partial volume, as
    the brain model's thick-slice augmentation), Dice + CE, 40 x 40 steps on 64^2 patches."""
    import torch

    from medloop.app.engine.augment import AugmentConfig
    from medloop.app.engine.train import TrainConfig, train_segmentation
    from medloop.models.nets import build_network
    from medloop.app.engine.losses import loss_by_name

    pairs = []
    for seed in (1, 2, 3):
        image, truth = phantom(seed, noise=PHANTOM_NOISE)
        a = np.asarray(image.array)
        for z in range(1, a.shape[0] - 1):
            pairs.append((a[z][None], truth[z], None))
            if z % 2 == 0:
                pairs.append((a[z - 1:z + 2].mean(axis=0)[None], truth[z], None))
    kwargs = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "features": [8, 16, 32], "norm": "group"}
    torch.manual_seed(0)
    aug = AugmentConfig.none()
    aug.p_flip = 0.5
    config = TrainConfig(epochs=epochs, steps_per_epoch=40, batch_size=8, patch_size=(64, 64), lr=3e-3, schedule="cosine",
                         augment=aug, foreground_fraction=0.0, loss=loss_by_name("dice_ce"), num_threads=1)
    result = train_segmentation(build_network("unet2d", **kwargs), pairs, None, config, copy_model=True)
    register_card(folder, "learned-phantom", {"name": "unet2d", "kwargs": kwargs}, "bcyx", {"slice_axis": 0})
    return "learned-phantom", result.model.eval()


PHANTOM_NOISE = 0.08


def phantom(seed: int = 0, shape=(120, 96, 96), noise: float = 0.0):
    """A (z, y, x) 1 mm volume: a smooth random field (Gaussian-filtered noise, sigma 6 mm)
    through a sigmoid, so edges are ~1 mm soft like partial volume, plus Gaussian noise of SD
    ``noise``; truth = the noise-free intensity > 0.5."""
    from scipy import ndimage

    from medloop.app.io.image import MedImage

    gen = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(gen.normal(size=shape), 6.0, mode="wrap")
    clean = 1.0 / (1.0 + np.exp(-(field / field.std() - 0.5) / 0.3))
    values = clean + gen.normal(0.0, noise, shape) if noise else clean
    return MedImage.from_array(values.astype(np.float32), spacing=(1.0, 1.0, 1.0)), (clean > 0.5).astype(np.int64)


def phantom_tables(k: int) -> dict[str, list[dict]]:
    """(a), (b), (c) on a phantom's thick version against its truth, with the ideal model (on the
    noise-free phantom) and with the learned model (on a noisy one); plus the model on the thin
    slices."""
    import tempfile

    from medloop.plugins.segmentation.method import SegmentParams, segment

    tables = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, make, noise in (("ideal model (threshold at 0.5)", ideal_model, 0.0),
                                   ("learned model (2-D U-Net, noise SD 0.08)", learned_model, PHANTOM_NOISE)):
            name, network = make(Path(tmp))
            image, truth_full = phantom(0, noise=noise)
            thick = thick_slices(image, k)
            n_fine = thick.shape[0] * k
            truth = truth_full[:n_fine]

            def run(volume, **options):
                params = SegmentParams(model=name, models_dir=Path(tmp), device="cpu", probabilities=True, **options)
                return segment(volume, params, network=network)

            plain = run(thick)
            nn, lin = nearest_and_linear(plain, image, n_fine)
            print(f"\nphantom {image.shape} at 1 mm, thick slices x{k}, {label}")
            rows = []
            for strategy, pred in (("(a) seed 000, centred", np.asarray(run(thick, upscale=(k, 1, 1)).labels.array)),
                                   ("(b) nearest-neighbour labels", nn), ("(c) linear probabilities", lin),
                                   ("the model on the thin slices", np.asarray(run(image).labels.array)[:n_fine])):
                sc = scores(pred, truth, (1.0, 1.0, 1.0), classes=((1, "fg"),))
                rows.append({"strategy": strategy, **sc})
                print(f"  {strategy:34s} Dice {sc['dice_fg']:.4f} | HD95 {sc['hd95_fg']:.2f} mm | ASSD {sc['assd_fg']:.3f} mm")
            dice_ok, hd_ok, hd_strict, assd_ok = verdict(rows, ("fg",))
            print(f"seed 000 vs nearest-neighbour: Dice higher {'PASS' if dice_ok else 'FAIL'}; "
                  f"HD95 lower {'PASS' if hd_strict else ('TIE' if hd_ok else 'FAIL')}; ASSD lower {'PASS' if assd_ok else 'FAIL'}")
            tables[label] = rows
    return tables


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


def cost_table(repeats: int, sizes=(64, 128, 256, 512)) -> list[dict]:
    """Wall time of y x2, x x2 (4 shifted copies) relative to one plain pass on n x n 2-D images,
    whole image as one tile, with the brain model's architecture (random weights: timing only).
    Small images show what batching the copies buys on a CPU (the per-call overhead is paid once);
    large ones that a call is capped before its activations outgrow the cache."""
    import tempfile

    import torch

    from medloop.app.io.image import MedImage
    from medloop.models.nets import build_network
    from medloop.plugins.segmentation.method import SegmentParams, segment

    kwargs = {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "features": [16, 32, 64, 128], "norm": "group"}
    torch.manual_seed(0)
    network = build_network("unet2d", **kwargs).eval()
    rows = []
    print("\ncost of 4 shifted copies (y x2, x x2) on n x n images, relative to one plain pass (target: below 4x)")
    with tempfile.TemporaryDirectory() as tmp:
        register_card(Path(tmp), "timing-unet", {"name": "unet2d", "kwargs": kwargs}, "bcyx")
        for n in sizes:
            image = MedImage.from_array(np.random.default_rng(0).random((n, n), dtype=np.float32), spacing=(1.0, 1.0))

            def run(**options):
                params = SegmentParams(model="timing-unet", models_dir=Path(tmp), device="cpu", roi_size=(n, n), batch_size=1, **options)
                return segment(image, params, network=network)

            run(), run(upscale=(2, 2))  # warm-up
            plain, up = [], []
            for _ in range(max(repeats, 3) * 2):  # interleaved, so drift in machine load hits both alike
                plain.append(timed(run, 1)[1])
                up.append(timed(lambda: run(upscale=(2, 2)), 1)[1])
            row = {"n": n, "plain_s": float(np.median(plain)), "copies_s": float(np.median(up))}
            row["ratio"] = row["copies_s"] / row["plain_s"]
            rows.append(row)
            print(f"  {n:4d}^2: plain {row['plain_s'] * 1000:7.1f} ms, 4 copies {row['copies_s'] * 1000:7.1f} ms = {row['ratio']:.2f}x")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--resolution", type=int, choices=(1, 2), default=1,
                    help="truth grid in mm: 1 = nilearn's 1 mm template (dev extra), 2 = the packaged sample")
    ap.add_argument("--factor", type=int, default=3, help="slice thickness / truth spacing (the paper: 3 and 6)")
    ap.add_argument("--phantom-only", action="store_true", help="only the phantom tables")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    k = args.factor
    rows = [] if args.phantom_only else brain_table(args.resolution, k, args.repeats)
    costs = [] if args.phantom_only else cost_table(args.repeats)
    phantoms = phantom_tables(k)
    ok = True
    if rows:
        dice_ok, hd_ok, hd_strict, assd_ok = verdict(rows, ("gm", "wm"))
        print(f"\nbrain, seed 000 (centred) vs nearest-neighbour, GM and WM: Dice higher {'PASS' if dice_ok else 'FAIL'}; "
              f"HD95 lower {'PASS' if hd_strict else ('TIE' if hd_ok else 'FAIL')}; ASSD lower {'PASS' if assd_ok else 'FAIL'}")
        print(f"{k} shifted copies in one batched pass cost {rows[0]['time_ratio']:.2f}x one plain pass (target: below {k}x)")
        ok = dice_ok and hd_ok and assd_ok
    ok = ok and all(all(verdict(t, ("fg",))[i] for i in (0, 1, 3)) for t in phantoms.values())
    if args.json:
        args.json.write_text(json.dumps({"factor": k, "resolution": args.resolution, "rows": rows, "costs": costs, "phantoms": phantoms}, indent=1))
    return 0 if ok else 1


def brain_table(resolution: int, k: int, repeats: int) -> list[dict]:
    """(a), (b), (c) on the MNI template's thick version with the packaged model, against the
    template's tissue labels; the first row is seed 000 (centred)."""
    from medloop.app.samples import load_brain_sample
    from medloop.models.registry import build_model, get_model
    from medloop.plugins.segmentation.method import SegmentParams, segment

    if resolution == 1:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
        from make_sample import load_mni

        t1, tissue = load_mni(1)
    else:
        t1, tissue = load_brain_sample()
    thick = thick_slices(t1, k)
    n_fine = thick.shape[0] * k
    truth = np.asarray(tissue.array)[:n_fine]  # the slices the thick volume covers
    spacing = tissue.spacing
    entry = get_model("brain-tissue-t1")
    network = build_model(entry, "cpu")

    def run(image=thick, **upscale):
        return segment(image, SegmentParams(model=entry.name, device="cpu", probabilities=True, **upscale), network=network)

    plain, t_plain = timed(lambda: run(), repeats)
    print(f"thick volume {thick.shape} at {thick.spacing} mm; truth {truth.shape} at {spacing} mm; plain segmentation {t_plain:.2f} s")
    rows = []

    def report(name: str, pred: np.ndarray, seconds: float) -> None:
        s = scores(pred, truth, spacing)
        row = {"strategy": name, **s, "seconds": seconds, "time_ratio": seconds / t_plain}
        rows.append(row)
        print(f"  {name:42s} Dice GM {s['dice_gm']:.4f} WM {s['dice_wm']:.4f} | HD95 GM {s['hd95_gm']:.2f} WM {s['hd95_wm']:.2f} mm"
              f" | ASSD GM {s['assd_gm']:.3f} WM {s['assd_wm']:.3f} mm"
              f" | time {seconds:.2f} s = {seconds / t_plain:.2f}x plain")

    truth_grid = tissue.with_array(np.asarray(tissue.array))
    t0 = time.perf_counter()
    nn, lin_labels = nearest_and_linear(plain, truth_grid, n_fine)
    t_interp = time.perf_counter() - t0
    variants = {
        "(a) seed 000, centred": dict(upscale=(k, 1, 1)),
        "(a) seed 000, paper's start shifts": dict(upscale=(k, 1, 1), upscale_align="start"),
        "(a) seed 000, overlap, mean": dict(upscale=(k, 1, 1), upscale_overlap=True),
        "(a) seed 000, overlap, vote": dict(upscale=(k, 1, 1), upscale_overlap=True, upscale_fusion="vote"),
    }
    for name, options in variants.items():
        result, seconds = timed(lambda: run(**options), repeats)
        labels = result.labels
        if options.get("upscale_align") == "start":  # fine grid starts 1 slice later: onto the truth grid
            pred = labels_onto(labels.array, labels, truth_grid)[:n_fine].astype(np.int64)
        else:
            assert np.allclose(labels.origin, tissue.origin) and np.allclose(labels.spacing, tissue.spacing)
            pred = np.asarray(labels.array)
        report(name, pred, seconds)
    report("(b) nearest-neighbour labels", nn, t_plain + t_interp / 2)
    report("(c) linear probabilities", lin_labels, t_plain + t_interp / 2)
    thin, seconds = timed(lambda: run(t1), 1)
    report("ceiling: the model on the real thin slices", np.asarray(thin.labels.array)[:n_fine], seconds)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
