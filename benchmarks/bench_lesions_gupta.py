"""Gupta et al.'s augmentation experiment at CPU scale (spec §1 acceptance, slow benchmark).

For each seed: baseline classifier AUC on the test set, augmented AUC at the validation-chosen t
with the paired-bootstrap ΔAUC and 95 % CI, the identity-paste control (same filter rule, and
unfiltered), kept counts per t. Acceptance: mean ΔAUC over the seeds >= +0.02 and greater than
the control's.

    PYTHONPATH=. python benchmarks/bench_lesions_gupta.py --seeds 0 1 2 --translator oracle
    --translator unit | unit:MODEL | oracle | identity   (unit: a UNIT trained per seed on its training split)
    --small: train 30:150, val 15:75, test 50:250 (quicker)
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def make_translator(spec: str):
    from medloop.plugins.lesions.gupta_experiment import OracleTranslator
    from medloop.plugins.lesions.translators import IdentityTranslator

    if spec == "oracle":
        return OracleTranslator(32, 2)
    if spec == "identity":
        return IdentityTranslator(32)
    if spec == "unit":
        return None  # trained per seed on that seed's training split (train_experiment_translator)
    if spec.startswith("unit:"):
        from medloop.plugins.lesions.zoo import load_lesion_model

        return load_lesion_model(spec[5:], "translator").translator()
    raise SystemExit(f"--translator {spec!r}; choose unit (trained per seed), unit:MODEL, oracle or identity")


def main(argv: list[str] | None = None) -> int:
    from medloop.plugins.lesions.gupta_experiment import run_gupta_experiment

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--translator", default="oracle")
    ap.add_argument("--per-lesion", type=int, default=10)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--json", help="write the full results here")
    args = ap.parse_args(argv)
    translator = make_translator(args.translator)
    sizes = {"train": (30, 150), "val": (15, 75), "test": (50, 250)} if args.small else None
    results = []
    from medloop.plugins.lesions.gupta_experiment import bone_data, train_experiment_translator

    for seed in args.seeds:
        data = bone_data(seed, sizes)
        own = translator if translator is not None else train_experiment_translator(data, seed)
        r = run_gupta_experiment(seed, own, synthetic_per_lesion=args.per_lesion, data=data)
        results.append(r)
        a, c, u = r["augmented"], r["control"], r["control_unfiltered"]
        print(f"seed {seed}: baseline AUC {r['baseline']['test_auc']:.3f} | {own.name} t={a['t']} "
              f"AUC {a['auc']:.3f} dAUC {a['delta']:+.3f} [{a['low']:+.3f}, {a['high']:+.3f}] | identity control "
              f"t={c['t']} dAUC {c['delta']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] | unfiltered identity dAUC "
              f"{u['delta']:+.3f} | kept {r['kept']} of {r['candidates']} (control {r['control_kept']}) | "
              f"mean score synth {r['mean_score']['synthetic']:.3f} identity {r['mean_score']['identity']:.3f} | "
              f"{r['seconds']} s", flush=True)
    mean = {k: float(np.mean([r[k]["delta"] for r in results])) for k in ("augmented", "control", "control_unfiltered")}
    ok = mean["augmented"] >= 0.02 and mean["augmented"] > mean["control"]
    print(f"mean dAUC over {len(results)} seeds: augmented {mean['augmented']:+.3f}, identity control "
          f"{mean['control']:+.3f}, unfiltered control {mean['control_unfiltered']:+.3f} -> acceptance "
          f"{'met' if ok else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    return 0


if __name__ == "__main__":
    sys.exit(main())
