"""Uncertainty: entropy maps, case scores, flip disagreement and the review order."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from medloop.app.io.image import MedImage
from medloop.app.io.read import read_image
from medloop.plugins.review.project import ReviewProject
from medloop.plugins.review.uncertainty import (
    UncertaintyError,
    entropy_map,
    entropy_score,
    flip_disagreement,
    flipped_predictions,
    uncertainty_summary,
)
from tests.plugins.review.review_synth import write_cases

torch.set_num_threads(1)


def test_entropy_is_zero_when_certain_one_when_uniform():
    probs = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    e = entropy_map(probs)
    assert e.dtype == np.float32
    np.testing.assert_allclose(e, [0.0, 1.0, np.log(2) / np.log(3)], atol=1e-6)
    np.testing.assert_allclose(entropy_map(probs.T, channel_axis=0), e)
    with pytest.raises(UncertaintyError, match="K >= 2"):
        entropy_map(np.ones((3, 1)))
    with pytest.raises(UncertaintyError, match="NaN"):
        entropy_map(np.array([[np.nan, 1.0]]))


def test_score_is_mean_over_predicted_structure():
    e = np.array([0.0, 0.0, 0.9, 0.5])
    assert entropy_score(e, np.array([0, 0, 1, 2])) == pytest.approx(0.7)
    assert entropy_score(e, np.zeros(4)) == pytest.approx(0.35)  # nothing predicted: everywhere


def test_flip_disagreement_is_the_disagreeing_share_of_the_structure():
    a = np.array([0, 1, 1, 1, 0, 0])
    b = np.array([0, 1, 1, 0, 1, 0])
    assert flip_disagreement([a, a]) == 0.0
    assert flip_disagreement([a, b]) == pytest.approx(2 / 4)
    assert flip_disagreement([np.zeros(3), np.zeros(3)]) == 0.0
    with pytest.raises(UncertaintyError):
        flip_disagreement([a])


def test_flipped_predictions_mirror_back_onto_the_grid():
    image = MedImage.from_array(np.arange(2 * 4 * 6, dtype=np.float32).reshape(2, 4, 6))

    def threshold(im):  # equivariant: flips change nothing
        return (np.asarray(im.array) > 20).astype(np.uint8)

    base = threshold(image)
    flipped = flipped_predictions(image, threshold)
    assert len(flipped) == 2 and all(np.array_equal(f, base) for f in flipped)

    def left_half(im):  # not equivariant: always the left half of the array
        out = np.zeros(im.shape, np.uint8)
        out[..., :3] = 1
        return out

    _, scores = uncertainty_summary(None, left_half(image), flipped_predictions(image, left_half, axes=[2]))
    assert scores["flip_disagreement"] == 1.0 and scores["score"] == 1.0 and scores["entropy"] is None


def test_doubtful_case_sorts_before_confident_one_and_maps_are_saved(tmp_path):
    specs = write_cases(tmp_path / "in", n=3, confidences=[0.99, 0.6, 0.8])
    specs[2] = replace(specs[2], probabilities=None)  # no probabilities: unknown score, last
    project = ReviewProject.create(tmp_path / "proj", specs)
    order = [c.id for c in project.cases_sorted("uncertainty")]
    assert order == ["case1", "case0", "case2"]
    scores = {c.id: c.uncertainty_score for c in project.cases}
    p = 0.6
    expected = -(p * np.log(p) + (1 - p) * np.log(1 - p)) / np.log(2)
    assert scores["case1"] == pytest.approx(expected, rel=1e-5)
    assert scores["case0"] < scores["case1"] and scores["case2"] is None
    emap = read_image(project.uncertainty_path("case1"))
    image = project.load_image("case1")
    assert emap.shape == image.shape
    np.testing.assert_allclose(emap.spacing, image.spacing, atol=1e-6)
    np.testing.assert_allclose(emap.direction, image.direction, atol=1e-6)
    assert project.uncertainty_path("case2") is None
    assert [c.id for c in ReviewProject.open(tmp_path / "proj").cases_sorted()] == order  # stored


def test_model_run_gives_predictions_entropy_and_flip_scores(tmp_path, brain_sample):
    from medloop.app.io.write import write_image

    t1, _ = brain_sample
    paths = []
    for k, z in enumerate((30, 60)):  # two 3-slice slabs of the packaged brain
        slab = replace(t1, array=np.ascontiguousarray(np.asarray(t1.array)[z : z + 3]), path=None)
        paths.append(write_image(slab, tmp_path / f"slab{k}.nii.gz"))
    project = ReviewProject.create_with_model(tmp_path / "proj", paths, "brain-tissue-t1", device="cpu", flips=True)
    for case in project.cases:
        assert case.predictions[0].model["model"] == "brain-tissue-t1"
        assert len(case.predictions[0].model["weights_sha256"]) == 64
        assert 0 < case.entropy < 1 and 0 <= case.flip_disagreement <= 1
        assert case.uncertainty_score == case.entropy
        pred = project.load_prediction(case.id)
        assert pred.shape == project.load_image(case.id).shape and set(np.unique(pred.array)) <= {0, 1, 2}
        assert read_image(project.uncertainty_path(case.id)).shape == pred.shape
