"""Click -> object, evaluated as spec ``interactive.md`` §5 says (issue #19): both engines on the
held-out objects, with the standard click simulator and its human-like variant.

Objects (none ever a training target of the click network):
* MNI 128^3: the packaged 2 mm T1 resampled to 128^3 (linear; labels nearest): the ventricles
  (largest CSF space enclosed by the brain) and the largest white-matter component ("seen shape,
  unseen intensities"), with the oracle ceiling (best global interval + connectivity from click 1).
* native 2 mm slices: the ventricles on 4 axial and 3 coronal slices (the learned engine's
  held-out anatomy), and white matter on the same slices (reported apart).
* 40 synthetic 3-D tubes (``evaluation.synthetic_tubes_3d``) and 40 synthetic 2-D tubes
  (``synth.heldout_tubes``): a shape family and seed no training uses.

Simulator: click 1 at the interior point farthest from the boundary; click k+1 at the centre of
the larger error (FN positive, FP negative); human-like: N(0, 2 mm) jitter inside the error and
10 % of clicks to the other error (3 seeds). Metrics: Dice@1/3/5/10, NoC85/90 (cap 20 in 2-D,
10 in 3-D), failures, share of clicks lowering Dice by > 0.02, click -> mask latency p50/p95
(3-D: over 5 interleaved repeats), everything through ``PromptSession`` (the panel's and CLI's
code path). Gates (classical): 3-D p95 <= 300 ms, 3-D Dice@5 >= 0.95 x ceiling, 2-D ventricle
NoC90 <= 4, <= 5 % of clicks lower Dice by > 0.02 on the MNI objects. The learned engine becomes
the default only if on the held-out 2-D objects its NoC90 <= classical - 1, its Dice@1 >=
classical + 0.05 and its p95 <= 300 ms (spec §7.4).

    python benchmarks/bench_interactive.py            # everything (~4 min on 2 cores)
    python benchmarks/bench_interactive.py --quick    # fewer objects and repeats (~1 min)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medloop.app.io.image import MedImage  # noqa: E402
from medloop.plugins.interactive import evaluation as ev  # noqa: E402
from medloop.plugins.interactive.params import InteractiveParams  # noqa: E402
from medloop.plugins.interactive.session import PromptSession  # noqa: E402

HUMAN_SEEDS = (0, 1, 2)


def session_factory(engine: str):
    params = InteractiveParams(engine=engine, allow_disabled=True)
    return lambda image: PromptSession(image, None, params)


def mni_volume_objects() -> tuple[MedImage, dict[str, np.ndarray]]:
    from medloop.app.samples import load_brain_sample

    t1, tissue = load_brain_sample()
    image = ev.resample_to_shape(t1, (128, 128, 128), 1)
    labels = np.asarray(ev.resample_to_shape(tissue, (128, 128, 128), 0).array)
    return image, {"ventricles": ev.ventricles(labels), "white matter": ev.white_matter(labels)}


def mni_slice_objects() -> dict[str, list[tuple[MedImage, np.ndarray]]]:
    """Ventricles and white matter on the native slices the click network holds out."""
    from medloop.app.samples import load_brain_sample
    from medloop.plugins.interactive.synth import mni_ventricle_slices

    _, tissue_image = load_brain_sample()
    tissue = np.asarray(tissue_image.array)
    vent, wm = [], []
    for s in mni_ventricle_slices():
        axis = 0 if s.name.startswith("axial") else 1
        k = int(s.name.split("=")[1])
        image = MedImage.from_array(s.image, spacing=tuple(s.spacing[::-1]))
        vent.append((image, s.target))
        wm.append((image, ev.largest_component(np.take(tissue, k, axis=axis) == 2)))
    return {"ventricles (7 slices)": vent, "white matter (7 slices)": wm}


def synthetic_2d(count: int) -> list[tuple[MedImage, np.ndarray]]:
    from medloop.plugins.interactive.synth import heldout_tubes

    return [(MedImage.from_array(o.image.astype(np.float32)), o.target) for o in heldout_tubes(count)]


def run_set(objects: list[tuple[MedImage, np.ndarray]], engine: str, clicks: int, repeats: int = 1) -> dict:
    """Deterministic and human-like summaries of ``engine`` on ``objects``; latency over
    ``repeats`` interleaved passes of the deterministic simulator."""
    make = session_factory(engine)
    passes = [[ev.run_trial(img, ref, make, clicks) for img, ref in objects] for _ in range(repeats)]
    trials = passes[0]
    out = ev.summarise(trials)
    ms = np.concatenate([t.ms for run in passes for t in run])
    out.update(ms_p50=float(np.percentile(ms, 50)), ms_p95=float(np.percentile(ms, 95)), ms_max=float(ms.max()))
    human = [ev.run_trial(img, ref, make, clicks, ev.Clicker(human=True, seed=s)) for s in HUMAN_SEEDS for img, ref in objects]
    out["human"] = ev.summarise(human)
    out["objects"] = len(objects)
    out["drop_clicks"] = sum(t.drops() for t in trials)
    out["clicks"] = sum(max(1, len(t.ms) - 1) for t in trials)
    return out


def ceilings(image: MedImage, objects: dict[str, np.ndarray]) -> dict[str, float]:
    spacing = tuple(image.spacing[::-1])
    array = np.asarray(image.array, np.float32)
    return {name: ev.oracle_ceiling(array, ref, ev.first_click(ref, spacing)) for name, ref in objects.items()}


def row(name: str, r: dict, cap: int) -> str:
    h = r["human"]
    return (f"| {name} | {r['dice@1']:.3f} / {r['dice@3']:.3f} / {r['dice@5']:.3f} / {r['dice@10']:.3f} | "
            f"{min(r['noc85'], cap):.1f} / {min(r['noc90'], cap):.1f} · {r['fail90']}/{r['objects']} | "
            f"{h['dice@1']:.3f} / {h['dice@5']:.3f} · {h['noc90']:.1f} | {100 * r['drops']:.1f} % | "
            f"{r['ms_p50']:.0f} / {r['ms_p95']:.0f} ({r['ms_max']:.0f}) |")


HEADER = ("| objects | Dice@1 / 3 / 5 / 10 | NoC85 / NoC90 · fail | human-like Dice@1 / 5 · NoC90 | clicks lowering Dice > 0.02 | ms p50 / p95 (max) |\n"
          "|---|---|---|---|---|---|")


def volume_sets(args: argparse.Namespace) -> tuple[dict, dict]:
    image, objects = mni_volume_objects()
    print(f"MNI 128^3: ventricles {int(objects['ventricles'].sum())} voxels, white matter {int(objects['white matter'].sum())}", flush=True)
    pairs = [(image, ref) for ref in objects.values()]
    both = run_set(pairs, "classical", 10, repeats=args.repeats)
    per = {name: run_set([(image, ref)], "classical", 10) for name, ref in objects.items()}
    # per-object latency from the interleaved passes is in ``both``; keep per-object Dice.
    tubes = ev.synthetic_tubes_3d(args.objects)
    per[f"synthetic tubes ({args.objects})"] = run_set([(o.image, o.target) for o in tubes], "classical", 10)
    return {"both": both, "per": per}, ceilings(image, objects)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 synthetic objects per set, 2 latency repeats")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    parser.add_argument("--update-card", action="store_true",
                        help="write the held-out comparison and the §7.4 decision into the click network's card")
    args = parser.parse_args()
    args.objects = 10 if args.quick else 40
    args.repeats = 2 if args.quick else 5
    start = time.time()
    volumes, ceiling = volume_sets(args)
    print("\n### 3-D (128^3 MNI, 10 clicks; synthetic 48^3 at 1 mm) — classical engine\n")
    print(HEADER)
    for name, r in volumes["per"].items():
        print(row(name, r, 10))
    print("\noracle ceiling (best interval + connectivity from click 1): " + ", ".join(f"{k} {v:.3f}" for k, v in ceiling.items()))
    print(f"3-D MNI latency over {args.repeats} interleaved passes: p50 {volumes['both']['ms_p50']:.0f} ms, p95 {volumes['both']['ms_p95']:.0f} ms, max {volumes['both']['ms_max']:.0f} ms")
    print("learned engine in 3-D: n/a (the 2-D click network segments the clicked slice only; the 3-D pass is phase 3)")
    slices = mni_slice_objects()
    sets2d = {**slices, f"synthetic tubes ({args.objects})": synthetic_2d(args.objects)}
    results2d = {engine: {name: run_set(objs, engine, 20) for name, objs in sets2d.items()} for engine in ("classical", "learned")}
    for engine, results in results2d.items():
        print(f"\n### 2-D (native 2 mm slices; synthetic 64^2), 20 clicks — {engine} engine\n")
        print(HEADER)
        for name, r in results.items():
            print(row(name, r, 20))
    gates = gate(volumes, ceiling, results2d)
    print("\n### Gates\n")
    for name, (ok, text) in gates.items():
        verdict = ("YES" if ok else "NO") if name.startswith("learned") else ("PASS" if ok else "FAIL")
        print(f"- {verdict} {name}: {text}")
    if args.update_card:
        print(f"updated {update_card(results2d, gates)}")
    print(f"\n(total {time.time() - start:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"volumes": volumes, "ceiling": ceiling, "slices": results2d,
                                         "gates": {k: v[0] for k, v in gates.items()}}, indent=1, default=float))
    return 0


def gate(volumes: dict, ceiling: dict, results2d: dict) -> dict[str, tuple[bool, str]]:
    """The issue's goals and spec §7.4's default-engine rule, as (passed, measured)."""
    per, both = volumes["per"], volumes["both"]
    out = {"3-D p95 <= 300 ms": (both["ms_p95"] <= 300, f"p95 {both['ms_p95']:.0f} ms")}
    for name in ("ventricles", "white matter"):
        d5, c = per[name]["dice@5"], ceiling[name]
        out[f"3-D {name} Dice@5 >= 0.95 x ceiling"] = (d5 >= 0.95 * c, f"{d5:.3f} vs 0.95 x {c:.3f} = {0.95 * c:.3f}")
    classical = results2d["classical"]
    noc = classical["ventricles (7 slices)"]["noc90"]
    out["2-D MNI ventricles NoC90 <= 4"] = (noc <= 4, f"{noc:.2f} (white matter {classical['white matter (7 slices)']['noc90']:.2f})")
    mni = [per["ventricles"], per["white matter"], classical["ventricles (7 slices)"], classical["white matter (7 slices)"]]
    drops, clicks = sum(r["drop_clicks"] for r in mni), sum(r["clicks"] for r in mni)
    out["<= 5 % of clicks lower Dice by > 0.02 (MNI)"] = (drops <= 0.05 * clicks, f"{drops} of {clicks} clicks ({100 * drops / max(clicks, 1):.1f} %)")
    learned = results2d["learned"]
    wins = []
    for name in ("ventricles (7 slices)", [k for k in learned if k.startswith("synthetic")][0]):
        c, l = classical[name], learned[name]
        for variant, cc, ll in (("", c, l), ("human-like ", c["human"], l["human"])):
            wins.append(ll["noc90"] <= cc["noc90"] - 1 and ll["dice@1"] >= cc["dice@1"] + 0.05)
    p95 = max(r["ms_p95"] for r in learned.values())
    default = all(wins) and p95 <= 300
    out["learned engine becomes the default (spec §7.4)"] = (default, f"{'yes' if default else 'no'}: beats classical on {sum(wins)} of {len(wins)} held-out comparisons, p95 {p95:.0f} ms")
    return out


def update_card(results2d: dict, gates: dict) -> Path:
    """Put the benchmark's held-out numbers of both engines and the default-engine decision in
    the packaged click network's card (``interactive.benchmark``, ``enabled``, ``reason``)."""
    from medloop.plugins.interactive.clicknet import packaged_card

    path = packaged_card()
    card = json.loads(path.read_text(encoding="utf-8"))
    keep = ("dice@1", "dice@5", "dice@10", "noc90", "fail90", "ms_p95")
    card["interactive"]["benchmark"] = {
        "command": "python benchmarks/bench_interactive.py --update-card",
        **{engine: {name: {k: round(float(r[k]), 3) for k in keep} | {"human-like noc90": round(float(r["human"]["noc90"]), 2)}
                    for name, r in results.items()} for engine, results in results2d.items()},
    }
    default, text = gates["learned engine becomes the default (spec §7.4)"]
    own = card["interactive"]["numbers"]
    c, l = results2d["classical"]["ventricles (7 slices)"], results2d["learned"]["ventricles (7 slices)"]
    card["interactive"]["enabled"] = bool(default)
    card["interactive"]["reason"] = (
        f"{'it beats' if default else 'it does not beat'} the classical engine on held-out objects (spec §7.4; "
        f"bench_interactive.py): {text.split(': ', 1)[-1]}; MNI ventricle slices NoC90 {l['noc90']:.1f} vs {c['noc90']:.1f}, "
        f"Dice@1 {l['dice@1']:.3f} vs {c['dice@1']:.3f}; its own held-out numbers (20 clicks): synthetic tubes "
        f"Dice@1 {own['heldout_tubes']['dice@1']}, NoC90 {own['heldout_tubes']['noc90']}; MNI ventricle slices "
        f"Dice@1 {own['mni_ventricles_2d']['dice@1']}, NoC90 {own['mni_ventricles_2d']['noc90']}")
    path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    raise SystemExit(main())
