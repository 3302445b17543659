"""Spec §E check 5: coverage, error, lost stretches, entropy on / off track."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.plugins.axons.checks import TracingInputError
from medloop.plugins.axons.metrics import coverage, evaluate_trace, lost_stretches, summarise

LINE = np.array([[30.0, 5.0], [30.0, 55.0]])
ARC = np.stack([30 + 20 * np.sin(np.linspace(0, np.pi, 200)), 10 + 40 * np.linspace(0, 1, 200)], axis=1)


def test_ground_truth_against_itself():
    for truth in (LINE, ARC):
        m = evaluate_trace(truth, truth)
        assert m.coverage == 100.0 and m.error_mean == pytest.approx(0.0, abs=1e-9) and m.n_lost == 0


def test_parallel_offsets():
    two = evaluate_trace(LINE + [2.0, 0.0], LINE)
    assert two.coverage == 100.0 and round(two.error_mean, 2) == 2.00 and two.error_sd == pytest.approx(0.0, abs=1e-9)
    vertices = np.stack([np.full(51, 32.0), np.arange(5.0, 56.0)], axis=1)  # every 1 px
    assert evaluate_trace(vertices, LINE).error_mean == pytest.approx(2.0)
    assert evaluate_trace(LINE + [4.0, 0.0], LINE).coverage == 0.0
    assert evaluate_trace(LINE + [3.0, 0.0], LINE).coverage == 100.0  # "within 3 px" includes 3


def test_partial_coverage_counts_keypoints():
    half = np.array([[30.0, 5.0], [30.0, 30.0]])
    # keypoints at cols 5..55 (51); those up to col 33 lie within 3 px of the trace: 29 of 51
    assert coverage(half, LINE) == pytest.approx(100 * 29 / 51)


def _detour(n_far: int) -> np.ndarray:
    on = np.stack([np.full(21, 30.0), np.arange(5.0, 26.0)], axis=1)
    far = np.stack([np.full(n_far, 45.0), np.arange(26.0, 26.0 + n_far)], axis=1)
    back = np.stack([np.full(10, 30.0), np.arange(26.0 + n_far, 36.0 + n_far)], axis=1)
    return np.concatenate([on, far, back])


def test_lost_stretches_longer_than_five_steps_are_left_out():
    six, five = evaluate_trace(_detour(6), LINE), evaluate_trace(_detour(5), LINE)
    assert six.n_lost == 1 and six.error_mean == pytest.approx(0.0) and six.kept.sum() == 31
    assert five.n_lost == 0 and five.error_mean == pytest.approx(15.0 * 5 / 36)
    mask, n = lost_stretches(np.array([12, 12, 12, 12, 12, 12, 0, 20, 20, 20, 20, 20, 11]))
    assert n == 1 and mask.tolist() == [True] * 6 + [False] * 7  # error exactly 11 is not "over 11"


def test_entropy_on_and_off_track():
    vertices = np.array([[30.0, 5.0], [30.0, 8.0], [36.0, 11.0], [30.0, 14.0]])
    m = evaluate_trace(vertices, LINE, entropy=np.array([-4.0, -3.5, -2.0]))
    assert m.entropy_on.tolist() == [-4.0, -3.5] and m.entropy_off.tolist() == [-2.0]
    s = summarise([m, evaluate_trace(LINE, LINE, entropy=np.array([-5.0]))])
    assert s["entropy_on"] == pytest.approx(-12.5 / 3) and s["entropy_off"] == -2.0


def test_summary_pools_vertices():
    s = summarise([evaluate_trace(LINE, LINE), evaluate_trace(LINE + [2.0, 0.0], LINE), evaluate_trace(LINE + [4.0, 0.0], LINE)])
    assert s["coverage"] == pytest.approx(200 / 3) and s["error"] == pytest.approx(2.0)
    assert s["error_sd"] == pytest.approx(np.std([0, 0, 2, 2, 4, 4]))


def test_a_ground_truth_path_needs_two_vertices():
    with pytest.raises(TracingInputError) as err:
        evaluate_trace(LINE, LINE[:1])
    assert str(err.value) == "ground-truth path 0 has 1 vertex; draw at least 2 vertices along the axon"
