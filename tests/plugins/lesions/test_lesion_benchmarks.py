"""The spec's long checks at CPU scale (``pytest --run-slow``; minutes each): the anomaly recipe
reproduces its packaged numbers, and Gupta et al.'s filter separates translated lesions from
identity pastes on a full-size split (the benchmark ``benchmarks/bench_lesions.py`` reports ΔAUC)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def one_thread():
    """The packaged models and the benchmark ran on one thread; torch's results (and a small
    classifier's all-or-nothing learning) depend on the thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_anomaly_recipe_reproduces_the_packaged_model(tmp_path):
    from medloop.plugins.lesions.recipes import train_lesion_recipe
    from medloop.plugins.lesions.zoo import find_lesion_model

    out = train_lesion_recipe("lesion-anomaly-brain", tmp_path / "m")
    card, packaged = json.loads((out / "card.json").read_text()), find_lesion_model("lesion-anomaly-brain").raw
    assert card["weights"]["sha256"] == packaged["weights"]["sha256"]
    assert card["metrics"]["uad_dice"] >= 0.5 and card["metrics"]["uad_auprc"] >= 0.55  # paper 0.634 / 0.616
    assert card["metrics"]["healthy_mae"] < 0.03


def test_the_filter_keeps_translated_lesions_and_drops_identity_pastes():
    from medloop.plugins.lesions.gupta_experiment import OracleTranslator, run_gupta_experiment

    r = run_gupta_experiment(0, OracleTranslator())
    kept = [r["kept"][t] for t in (0.5, 0.7, 0.9)]
    assert kept == sorted(kept, reverse=True) and kept[0] > 0  # the paper's 1412 > 577 > 401 > 257
    assert r["mean_score"]["synthetic"] > 2 * r["mean_score"]["identity"]
    assert all(r["control_kept"][t] <= r["kept"][t] for t in (0.5, 0.7, 0.9))
    # pasting every untranslated patch as a "positive" hurts: the gain must come from lesions
    assert r["control_unfiltered"]["delta"] < 0 and np.isfinite(r["augmented"]["delta"])
