"""Where to paint next (#18 §1), Qt-free: the uncertainty map and the ranking of regions on
constructed cases where the answer is known."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from medloop.plugins.correction import guidance
from medloop.plugins.correction.pixel_teacher import fit_pixel_teacher
from tests.plugins.correction.test_unannotated import FixedNet, disc_case


class IntensityNet(torch.nn.Module):
    """Two classes by intensity: class 0 near 0.2, class 1 near 0.8, a tie at 0.5."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.cat([-60 * (x - 0.2) ** 2, -60 * (x - 0.8) ** 2], 1) + 0 * self.dummy


def overlap(box, rows: slice, cols: slice) -> float:
    y0, x0, y1, x1 = box
    inter = max(0, min(y1, rows.stop) - max(y0, rows.start)) * max(0, min(x1, cols.stop) - max(x0, cols.start))
    return inter / ((y1 - y0) * (x1 - x0))


def test_uncertainty_components_exact():
    p = np.array([[0.5, 1.0, 0.6], [0.5, 0.0, 0.4]])
    assert guidance.margin_uncertainty(p).tolist() == pytest.approx([1.0, 0.0, 0.8])
    assert guidance.normalised_entropy(p)[:2].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    flipped = np.array([[0, 0, 1], [0, 1, 1]])
    assert guidance.flip_disagreement(np.array([0, 0, 0]), flipped).tolist() == [0.0, 0.5, 1.0]
    ties = np.array([[0.5, 0.5, 0.6], [0.5, 0.5, 0.4]])  # the model: class 0 everywhere, two close calls
    teacher = np.array([[0.95, 0.5, 0.05], [0.05, 0.5, 0.95]])
    u = guidance.uncertainty_map(ties, None, teacher)
    # pixel 0: a tie, but the classifier is sure of the model's class -> 0; pixel 1: a tie, the
    # classifier unsure -> the squared margin 1; pixel 2: the classifier sure of another class -> 1
    assert u.tolist() == pytest.approx([0.0, 1.0, 1.0])


def test_a_region_the_model_cannot_know_ranks_first():
    """Painted: a dark (class 0) and a bright (class 1) half. Never painted: a patch of a third,
    in-between intensity, where the model can only guess: it is the top suggestion."""
    x = np.full((1, 96, 96), 0.2, np.float32)
    x[:, :, 48:] = 0.8
    x[:, 60:84, 12:36] = 0.5
    strokes = np.zeros((96, 96), np.int64)
    strokes[10:40, 20] = 1
    strokes[10:40, 70] = 2
    strokes[70:90, 60] = 2
    suggestions, u, labels = guidance.suggest(IntensityNet(), x, strokes, n=3)
    assert overlap(suggestions[0].box, slice(60, 84), slice(12, 36)) >= 0.5
    assert suggestions[0].uncertainty > 0.9 and suggestions[0].score > suggestions[1].score
    assert u[70, 20] > 0.99 and u[20, 20] < 0.01  # sure where painted-like, a tie in the patch
    assert [s.rank for s in suggestions] == [1, 2, 3] and suggestions[0].slice is None


def test_far_background_called_tissue_ranks_first():
    """The scratch model's failure (#18): sure that the never-painted far background is tissue.
    Entropy and flips see nothing; the strokes' pixel classifier is sure it is background, so
    a region there is suggested first."""
    x, truth, s = disc_case(0)
    wrong = truth.copy()
    wrong[:, 70:] = 1
    net = FixedNet(wrong)
    teacher = fit_pixel_teacher([(x, s)], 3, seed=0)
    probs, _ = guidance.predict_probabilities(net, x, flips=False)  # a fixed map: flips would mirror it
    labels = probs.argmax(0)
    plain = guidance.rank_regions(guidance.uncertainty_map(probs), s, labels, x, n=1)
    u = guidance.uncertainty_map(probs, None, teacher.probabilities(x))
    guided = guidance.rank_regions(u, s, labels, x, n=3)
    assert all(sg.box[1] >= 64 for sg in guided)  # every top-3 region lies in the far background
    assert u[:, 72:].mean() > 0.8 and u[:, :60].mean() < 0.2
    assert plain[0].uncertainty < 0.05  # without the classifier the model looks sure everywhere


def test_signal_free_slices_are_never_suggested_and_slices_are_spread():
    """A volume: slice 0 ripples by 1e-5 (no signal) and a scratch-like model calls it tissue;
    slices 1-4 carry the same uncertain pattern. Slice 0 gets u = 0 and no suggestion; at most
    two suggestions per slice."""
    rng = np.random.default_rng(0)
    x = np.zeros((1, 5, 48, 48), np.float32)
    x[:, 0] = rng.normal(0, 1e-5, (48, 48))
    x[:, 1:, :, :24] = 0.2
    x[:, 1:, :, 24:] = 0.8
    x[:, 1:, 10:30, 10:30] = 0.5
    strokes = np.zeros((5, 48, 48), np.int64)
    strokes[2, 40, 2:20] = 1
    strokes[2, 40, 28:46] = 2

    class TissueOnEmpty(IntensityNet):
        def forward(self, x):
            out = super().forward(x)
            return torch.where(x.abs().amax(dim=(1, 2, 3), keepdim=True) < 1e-3, torch.tensor([-5.0, 5.0]).view(1, 2, 1, 1), out)

    suggestions, u, labels = guidance.suggest(TissueOnEmpty(), x, strokes, n=6, region=16)
    assert u[0].max() == 0.0 and (labels[0] == 0).all()
    assert all(s.slice != 0 for s in suggestions)
    per_slice = np.bincount([s.slice for s in suggestions])
    assert per_slice.max() <= 2 and len(suggestions) == 6


def test_write_suggestions_csv_and_json(tmp_path):
    s = [guidance.Suggestion(1, 3, (0, 24, 24, 48), 0.9, 0.8, 12.5, 2), guidance.Suggestion(2, None, (24, 0, 48, 24), 0.5, 0.4, float("inf"), 0)]
    rows = list(csv.reader(guidance.write_suggestions(s, tmp_path / "s.csv").read_text().splitlines()))
    assert rows[0][:6] == ["rank", "slice", "y0", "x0", "y1", "x1"]
    assert rows[1] == ["1", "3", "0", "24", "24", "48", "0.9", "0.8", "12.5", "2"]
    assert rows[2][1] == ""
    data = json.loads(guidance.write_suggestions(s, tmp_path / "s.json").read_text())
    assert data[0]["box"] == [0, 24, 24, 48] and data[0]["slice"] == 3 and data[1]["slice"] is None
