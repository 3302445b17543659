"""Baur et al. at CPU scale (spec §3): UAD Dice / AUPRC (paper 0.634 / 0.616), the no-GDL
ablation, pseudo-label Dice, student vs teacher, domain shift B_YL vs B_YL+S, and the latency of
anomaly_map on a 256 x 256 slice.

    python benchmarks/bench_lesions_anomaly.py            # 3 seeds, the spec's preset (minutes)
    python benchmarks/bench_lesions_anomaly.py --quick    # 200 healthy slices, 250 steps
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    import torch

    from medloop.plugins.lesions.anomaly import AnomalyConfig, train_autoencoder
    from medloop.plugins.lesions.anomaly_training import (
        brain_sets, domain_shift_experiment, evaluate_anomaly, student_experiment, target_autoencoder)
    from medloop.plugins.lesions.residual import anomaly_map

    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--channels", type=int, nargs=3, default=[16, 16, 16], help="the packaged recipe's (spec: 8 16 16)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n_healthy, epochs, unet_steps = (200, 5, 150) if args.quick else (800, 15, 300)
    rows = []
    for seed in range(args.seeds):
        sets = brain_sets(seed, n_healthy, 60, 100)
        row = {"seed": seed}
        for name, gdl in (("gdl", 1.0), ("no_gdl", 0.0)):
            config = AnomalyConfig(channels=tuple(args.channels), epochs=epochs, steps_per_epoch=50, lr=4e-3,
                                   gdl_weight=gdl, seed=seed)
            started = time.perf_counter()
            model = train_autoencoder(sets.healthy, config).model
            metrics = evaluate_anomaly(model, sets)
            row[name] = {**metrics, "train_s": round(time.perf_counter() - started, 1)}
            if name == "gdl":
                row["student"] = student_experiment(model, metrics["threshold"], sets, steps=unet_steps, seed=seed)
                target, target_t = target_autoencoder(config, sets, n_healthy, seed)
                row["shift"] = domain_shift_experiment(target, target_t, sets, steps=unet_steps, seed=seed)
                slice256 = np.kron(sets.test[0].image, np.ones((4, 4), np.float32))
                anomaly_map(model, slice256)
                started = time.perf_counter()
                for _ in range(5):
                    anomaly_map(model, slice256)
                row["latency_256_ms"] = round((time.perf_counter() - started) / 5 * 1000, 1)
        print(row, flush=True)
        rows.append(row)

    def mean(get):  # mean ± sd over seeds
        values = np.array([get(r) for r in rows], float)
        return f"{values.mean():.3f} ± {values.std():.3f}"

    print(f"UAD Dice {mean(lambda r: r['gdl']['uad_dice'])} / AUPRC {mean(lambda r: r['gdl']['uad_auprc'])} (paper 0.634 / 0.616)")
    print(f"no GDL: Dice {mean(lambda r: r['no_gdl']['uad_dice'])} / AUPRC {mean(lambda r: r['no_gdl']['uad_auprc'])} (paper 0.610 / 0.599)")
    print(f"healthy MAE (whole / brain) {mean(lambda r: r['gdl']['healthy_mae'])} / {mean(lambda r: r['gdl']['healthy_mae_brain'])}")
    print(f"pseudo-label Dice {mean(lambda r: r['student']['pseudo_label_dice'])}; teacher {mean(lambda r: r['student']['teacher_dice'])}"
          f" vs student A_S {mean(lambda r: r['student']['student_dice'])}")
    print(f"target Dice B_YL {mean(lambda r: r['shift']['b_yl_target_dice'])} vs B_YL+S {mean(lambda r: r['shift']['b_yl_s_target_dice'])}"
          f" (target pseudo-labels Dice {mean(lambda r: r['shift']['target_pseudo_label_dice'])}; paper 0.398 -> 0.675)")
    print(f"anomaly_map 256x256 latency {mean(lambda r: r['latency_256_ms'])} ms")


if __name__ == "__main__":
    main()
