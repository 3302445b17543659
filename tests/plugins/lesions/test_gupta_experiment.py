"""Gupta et al.'s CPU-scale experiment: data, oracle translator, the t filter, a tiny end-to-end run."""

from __future__ import annotations

import numpy as np

from medloop.plugins.lesions.classifier import ClassifierConfig
from medloop.plugins.lesions.gupta_experiment import OracleTranslator, bone_data, kept_counts, run_gupta_experiment
from medloop.plugins.lesions.phantoms import make_phantom, with_spec

TINY = {"train": (6, 30), "val": (4, 20), "test": (6, 30)}


def test_kept_count_does_not_increase_with_t_on_fixed_scores():
    scores = np.random.default_rng(0).random(500)
    counts = kept_counts(scores, (0.0, 0.5, 0.7, 0.9, 0.95, 1.0))
    values = list(counts.values())
    assert values == sorted(values, reverse=True) and values[0] == 500
    assert counts[0.7] == int((scores >= 0.7).sum())


def test_bone_data_sizes_and_disjoint_sets():
    data = bone_data(0, TINY)
    assert data.train.images.shape == (36, 64, 128) and data.test.images.shape == (36, 64, 128)
    assert 4 <= data.train.labels.sum() <= 6 and not data.train.labels[6:].any()
    assert all(len(b) == int(y) for b, y in zip(data.train.boxes, data.train.labels))
    flat = [s.images.reshape(len(s.images), -1) for s in (data.train, data.val, data.test)]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not (flat[a][:, None, :5] == flat[b][None, :, :5]).all(axis=2).any()


def test_oracle_paints_a_dark_centre_and_is_seeded():
    patch = make_phantom("bone", 2, with_lesion=False).image[16:48, 40:72][None]
    oracle = OracleTranslator(32, 2, spec=with_spec("bone", amplitude=(0.10, 0.20), rim=0.06, radius=(2.5, 5.0)))
    out = oracle.translate(patch, seed=4)
    change = out[0] - patch[0]
    assert out.shape == patch.shape and out.dtype == np.float32
    assert change[14:18, 14:18].mean() < -0.08  # the lytic centre (amplitude 0.10-0.20)
    assert np.abs(change[:2]).max() < 1e-3  # far from the lesion: unchanged
    assert np.array_equal(oracle.translate(patch, seed=4), out)
    assert not np.array_equal(oracle.translate(patch, seed=5), out)


def test_tiny_experiment_runs_with_monotone_kept_counts():
    config = ClassifierConfig(width=4, epochs=1, steps_per_epoch=3, batch=8)
    r = run_gupta_experiment(0, OracleTranslator(), synthetic_per_lesion=2, config=config, data=bone_data(0, TINY))
    for kept in (r["kept"], r["control_kept"]):
        values = [kept[t] for t in (0.5, 0.7, 0.9)]
        assert values == sorted(values, reverse=True) and values[0] <= r["candidates"]
    for arm in ("augmented", "control"):
        a = r[arm]
        assert a["t"] == max(a["per_t"], key=lambda t: (a["per_t"][t]["val_auc"], t))
        assert abs(a["delta"] - (a["auc"] - r["baseline"]["test_auc"])) < 1e-12 and a["low"] <= a["delta"] <= a["high"]
        assert [a["per_t"][t]["kept"] for t in (0.5, 0.7, 0.9)] == [r["kept" if arm == "augmented" else "control_kept"][t] for t in (0.5, 0.7, 0.9)]
    assert r["control_unfiltered"]["kept"] == r["candidates"] == 2 * 6  # 2 per real lesion image
