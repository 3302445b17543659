"""Lesion models as data: packaged cards and weights (sha256, test data), recipes that reproduce
them bit for bit, loading by name or folder, and the synthesize CLI on a trained translator."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medloop.app.errors import ResourceError
from medloop.app.io.hashing import sha256_file
from medloop.app.io.image import MedImage
from medloop.app.io.read import read_image
from medloop.app.io.write import write_image
from medloop.plugins.lesions.checks import LesionInputError
from medloop.plugins.lesions.phantoms import make_phantom
from medloop.plugins.lesions.recipes import LesionRecipeError, load_lesion_recipe, train_lesion_recipe
from medloop.plugins.lesions.zoo import find_lesion_model, list_lesion_models, load_lesion_model

TINY_TRANSLATOR = {
    "name": "tiny-unit", "kind": "translator", "description": "a few UNIT steps for tests",
    "data": {"seed": 1, "lesion": 6, "healthy": 30, "s": [2], "n": 2, "shape": [64, 128]},
    "train": {"width": 4, "size": 16, "batch": 2, "steps": 20, "steps_per_epoch": 10, "disc_width": 4, "disc_scales": 1},
    "evaluation": {"lesion": 4, "healthy": 10, "n": 1},
}


@pytest.fixture(scope="module")
def tiny_translator(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    recipe = d / "tiny-unit.json"
    recipe.write_text(json.dumps(TINY_TRANSLATOR))
    return recipe, train_lesion_recipe(recipe, d / "model")


def test_packaged_models_have_their_sha256_and_reproduce_their_test_data():
    cards = list_lesion_models()
    assert {c.raw["kind"] for c in cards} >= {"anomaly"}
    for card in cards:
        folder = card.path.parent
        assert sha256_file(folder / card.weights_file) == card.weights_sha256
        assert card.raw["training"]["recipe"] == load_lesion_recipe(card.name).raw  # the packaged recipe made it
        assert card.raw["training"]["command"] == f"medloop lesions train --recipe {card.name} --out DIR"
    anomaly = load_lesion_model("lesion-anomaly-brain", "anomaly")
    data = np.load(anomaly.card.path.parent / "test_data.npz")
    from medloop.plugins.lesions.anomaly import reconstruct

    np.testing.assert_allclose(reconstruct(anomaly.network, data["input"]), data["output"], atol=1e-5)
    assert anomaly.card.raw["metrics"]["uad_dice"] >= 0.5 and anomaly.card.raw["metrics"]["uad_auprc"] >= 0.55
    assert anomaly.threshold == anomaly.card.raw["metrics"]["threshold"] and anomaly.median == 5


def test_a_recipe_trains_the_same_weights_twice(tiny_translator, tmp_path):
    recipe, first = tiny_translator
    second = train_lesion_recipe(recipe, tmp_path / "again")
    a, b = json.loads((first / "card.json").read_text()), json.loads((second / "card.json").read_text())
    assert a["weights"]["sha256"] == b["weights"]["sha256"] == sha256_file(first / "weights.pt")
    assert a["task"] == "synthesis" and a["kind"] == "translator" and a["inputs"][0]["shape"] == [16, 16]
    assert not (first / "checkpoint.pt").exists()


def test_a_model_folder_loads_as_a_translator(tiny_translator):
    _, folder = tiny_translator
    translator = load_lesion_model(folder, "translator").translator()
    patches = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    out = translator.translate(patches)
    assert out.shape == (3, 16, 16) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    assert np.array_equal(out, translator.translate(patches))
    assert translator.name == "tiny-unit" and translator.sha256 == sha256_file(folder / "weights.pt")


def test_synthesize_cli_keeps_geometry_and_changes_only_the_crop(cli, tiny_translator, tmp_path):
    _, folder = tiny_translator
    bone = make_phantom("bone", 2, with_lesion=False)
    geometry = {"spacing": (0.5, 0.25), "origin": (3.0, -4.0)}
    write_image(MedImage.from_array(bone.image, **geometry), tmp_path / "bone.nii.gz")
    result = cli("lesions", "synthesize", str(tmp_path / "bone.nii.gz"), "--box", "26", "60", "36", "70",
                 "-o", str(tmp_path / "out.nii.gz"), "--mask-out", str(tmp_path / "mask.nii.gz"),
                 "--model", str(folder), "--seed", "3")
    assert result.returncode == 0, result.stderr
    out = read_image(tmp_path / "out.nii.gz")
    assert out.spacing == pytest.approx(geometry["spacing"]) and out.origin == pytest.approx(geometry["origin"])
    crop = [int(v) for v in result.stdout.split("crops [(")[1].split(")")[0].split(",")]
    changed = np.asarray(out.array) != bone.image
    outside = np.ones(changed.shape, bool)
    outside[crop[0]:crop[2], crop[1]:crop[3]] = False
    assert changed.any() and not changed[outside].any()
    mask = np.asarray(read_image(tmp_path / "mask.nii.gz").array)
    assert mask.dtype == np.uint8 and not mask[:26].any() and not mask[36:].any()


def test_the_wrong_kind_and_damaged_weights_are_refused(tiny_translator, tmp_path):
    _, folder = tiny_translator
    with pytest.raises(LesionInputError) as err:
        load_lesion_model(folder, "anomaly")
    assert str(err.value) == "model tiny-unit is a translator, not an anomaly model; choose an anomaly model"
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("card.json", "weights.pt", "test_data.npz"):
        (damaged / name).write_bytes((folder / name).read_bytes())
    with open(damaged / "weights.pt", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ResourceError, match="do not match the sha256 in its card"):
        load_lesion_model(damaged)
    with pytest.raises(LesionInputError, match="no lesion model named 'nope'; known: "):
        find_lesion_model("nope")


def test_a_recipe_with_an_unknown_kind_is_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**TINY_TRANSLATOR, "kind": "teleporter"}))
    with pytest.raises(LesionRecipeError) as err:
        load_lesion_recipe(bad)
    assert str(err.value) == f"lesion recipe {bad} has kind 'teleporter'; choose one of translator, classifier, anomaly, segmenter"
