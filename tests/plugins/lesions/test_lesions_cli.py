"""``medloop lesions …`` through the installed CLI on files the tests write: geometry kept,
measured outputs, and every bad input one line on stderr with exit code 2."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from medloop.app.io.image import MedImage
from medloop.app.io.read import read_image
from medloop.app.io.write import write_image
from medloop.plugins.lesions.metrics import dice
from medloop.plugins.lesions.phantoms import phantom_set
from tests.cli_helpers import refused

GEOMETRY = {"spacing": (0.8, 0.7), "origin": (-12.5, 30.25), "direction": np.array([[0.0, 1.0], [1.0, 0.0]])}


@pytest.fixture(scope="module")
def brains(tmp_path_factory):
    d = tmp_path_factory.mktemp("brains")
    phantoms = phantom_set("brain", 3, 21, lesion_fraction=1.0)
    for i, p in enumerate(phantoms):
        write_image(MedImage.from_array(p.image, **GEOMETRY), d / f"case{i}.nii.gz")
    return d, phantoms


def test_phantom_verb_writes_images_twins_masks_and_boxes(cli, tmp_path):
    result = cli("lesions", "phantom", "bone", str(tmp_path), "--count", "4", "--seed", "3", "--lesion-fraction", "0.5")
    assert result.returncode == 0, result.stderr
    expected = phantom_set("bone", 4, 3, 0.5)
    for i, p in enumerate(expected):
        assert np.array_equal(np.asarray(read_image(tmp_path / f"bone_{i:04d}.nii.gz").array), p.image)
        assert np.array_equal(np.asarray(read_image(tmp_path / f"bone_{i:04d}_lesion.nii.gz").array), p.lesion)
        assert np.array_equal(np.asarray(read_image(tmp_path / f"bone_{i:04d}_healthy.nii.gz").array), p.healthy)
    with open(tmp_path / "boxes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["source"], int(r["y0"]), int(r["x0"]), int(r["y1"]), int(r["x1"])) for r in rows] == [
        (f"bone_{i:04d}.nii.gz", *box) for i, p in enumerate(expected) for box in p.boxes]


def test_anomaly_of_one_image_keeps_its_geometry_and_finds_the_lesions(cli, brains, tmp_path):
    d, phantoms = brains
    result = cli("lesions", "anomaly", str(d / "case0.nii.gz"), "-o", str(tmp_path / "r.nii.gz"),
                 "--labels-out", str(tmp_path / "l.nii.gz"))
    assert result.returncode == 0, result.stderr
    for name in ("r.nii.gz", "l.nii.gz"):
        out = read_image(tmp_path / name)
        assert out.spacing == pytest.approx(GEOMETRY["spacing"]) and out.origin == pytest.approx(GEOMETRY["origin"])
        np.testing.assert_allclose(out.direction, GEOMETRY["direction"], atol=1e-9)
    labels = np.asarray(read_image(tmp_path / "l.nii.gz").array) > 0
    assert dice(labels, phantoms[0].lesion) > 0.6
    assert "voxels >= t = 0.0950" in result.stdout  # the packaged model's calibrated t


def test_anomaly_of_a_folder_runs_the_cohort(cli, brains, tmp_path):
    d, phantoms = brains
    result = cli("lesions", "anomaly", str(d), "-o", str(tmp_path / "out"), "--threshold", "0.2")
    assert result.returncode == 0, result.stderr
    strict = [np.asarray(read_image(tmp_path / "out" / f"case{i}_labels.nii.gz").array) for i in range(3)]
    loose = cli("lesions", "anomaly", str(d), "-o", str(tmp_path / "loose"))
    assert loose.returncode == 0, loose.stderr
    default = [np.asarray(read_image(tmp_path / "loose" / f"case{i}_labels.nii.gz").array) for i in range(3)]
    # t = 0.2 labels a subset of what the calibrated t = 0.095 labels
    assert all(((s > 0) <= (m > 0)).all() for s, m in zip(strict, default))
    assert sum(int(s.sum()) for s in strict) < sum(int(m.sum()) for m in default)


@pytest.mark.parametrize("extra, message", [
    (("--threshold", "1.5"), "medloop: error: threshold t = 1.5 is outside [0, 1]; choose a value in [0, 1]"),
    (("--model", "nope"), "medloop: error: no lesion model named 'nope'; known:"),
    (("--model", "lesion-classifier-bone"), "medloop: error: model lesion-classifier-bone is a classifier, not an anomaly model; choose an anomaly model"),
])
def test_anomaly_bad_settings_are_one_line(cli, brains, tmp_path, extra, message):
    d, _ = brains
    assert refused(cli, "lesions", "anomaly", str(d / "case0.nii.gz"), "-o", str(tmp_path / "r.nii.gz"), *extra).startswith(message)
    assert not (tmp_path / "r.nii.gz").exists()


def test_anomaly_refuses_an_unnormalised_image(cli, tmp_path):
    write_image(MedImage.from_array(np.linspace(0, 255, 64 * 64, dtype=np.float32).reshape(64, 64)), tmp_path / "raw.nii.gz")
    line = refused(cli, "lesions", "anomaly", str(tmp_path / "raw.nii.gz"), "-o", str(tmp_path / "r.nii.gz"))
    assert line.startswith("medloop: error: ") and "has values in [0, 255] but the anomaly model expects an image scaled to [0, 1]" in line


def test_train_with_augmentation_needs_a_classifier_recipe(cli, tmp_path):
    line = refused(cli, "train", "--recipe", "lesion-anomaly-brain", "--augment-lesions", "lesion-unit-bone", "--out", str(tmp_path))
    assert line == ("medloop: error: --augment-lesions trains a lesion classifier recipe (e.g. lesion-classifier-bone); "
                    "lesion-anomaly-brain is an anomaly recipe")


def _predict(folder, image):
    import json

    import torch

    from medloop.models.nets import build_network

    card = json.loads((folder / "card.json").read_text())
    net = build_network(card["architecture"]["name"], **card["architecture"]["kwargs"])
    net.load_state_dict(torch.load(folder / card["weights"]["source"], weights_only=True))
    net.eval()
    with torch.inference_mode():
        return net(torch.from_numpy(image[None, None].astype(np.float32))).argmax(1)[0].numpy()


def test_the_loop_anomaly_annotation_then_fine_tune_of_the_student(cli, brains, tmp_path):
    """Anomaly pseudo-labels -> Correction annotation -> the packaged student fine-tuned on it."""
    from medloop.models.registry import get_model

    d, phantoms = brains
    result = cli("lesions", "anomaly", str(d / "case1.nii.gz"), "-o", str(tmp_path / "r.nii.gz"),
                 "--annotation-out", str(tmp_path / "a.nii.gz"))
    assert result.returncode == 0, result.stderr
    annotation = np.asarray(read_image(tmp_path / "a.nii.gz").array)
    assert set(np.unique(annotation)) == {0, 1, 2} and dice(annotation == 2, phantoms[1].lesion) > 0.6
    tuned = cli("train", "--weak", "strokes", "--image", str(d / "case1.nii.gz"), "--annotation", str(tmp_path / "a.nii.gz"),
                "--model", "lesion-student-brain", "--out", str(tmp_path / "versions"))
    assert tuned.returncode == 0, tuned.stderr
    folder = tmp_path / "versions" / "lesion-student-brain" / "v1"
    after = _predict(folder, phantoms[1].image)
    before = _predict(get_model("lesion-student-brain").folder, phantoms[1].image)
    # the fine-tuned student follows its annotation: lesion where marked, background on the ring
    assert (after[annotation == 2] == 1).mean() >= max(0.8, (before[annotation == 2] == 1).mean() - 0.05)
    assert (after[annotation == 1] == 0).mean() >= 0.95
