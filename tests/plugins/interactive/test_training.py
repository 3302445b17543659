"""The click-net recipe: deterministic (same seed, same sha256), a card that ships it disabled."""

from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np
import pytest

from medloop.models.card import read_card
from medloop.plugins.interactive import clicknet, training

TINY = {
    "name": "click-tiny", "version": "1", "kind": "click-2d", "description": "a 12-step test recipe", "data": {},
    "train": {"steps": 12, "steps_per_epoch": 6, "batch": 4, "max_rounds": 2},
    "evaluation": {"tubes": 2, "mni_axial": 1, "mni_coronal": 1, "clicks": 3},
}


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_recipe_twice_gives_the_same_weights_and_a_disabled_card(tmp_path):
    recipe = tmp_path / "click-tiny.json"
    recipe.write_text(json.dumps(TINY))
    a = training.train_click_model(recipe, tmp_path / "a")
    b = training.train_click_model(recipe, tmp_path / "b")
    assert _sha(a / "weights.pt") == _sha(b / "weights.pt")
    card = read_card(a / "card.json")
    assert card.task == "interactive" and card.weights_sha256 == _sha(a / "weights.pt")
    assert card.raw["training"]["steps"] == 12 and not (a / "checkpoint.pt").exists()
    section = card.raw["interactive"]
    assert section["enabled"] is False and section["numbers"]["heldout_tubes"]["objects"] == 2
    assert section["numbers"]["mni_ventricles_2d"]["objects"] == 2
    assert clicknet.learned_status(a / "card.json") == (False, section["reason"])
    data = np.load(a / "test_data.npz")
    net = clicknet.load_click_net(a / "card.json")
    import torch

    with torch.inference_mode():
        out = torch.sigmoid(net(torch.from_numpy(data["input"]))).numpy()
    np.testing.assert_allclose(out, data["output"], atol=1e-5)


def test_the_train_verb_takes_only_click_recipes(tmp_path):
    assert training.is_click_recipe("click-any-2d")
    assert not training.is_click_recipe("brain-tissue-t1") and not training.is_click_recipe(None)
    other = tmp_path / "seg.json"
    other.write_text(json.dumps({"name": "seg", "kind": "segmentation"}))
    assert not training.is_click_recipe(other)
    assert training.TRAINING.run(argparse.Namespace(recipe="brain-tissue-t1", out=tmp_path / "x")) is None
    with pytest.raises(training.ClickRecipeError, match="unknown train settings: epochs"):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**TINY, "train": {"epochs": 3}}))
        training.train_click_model(bad, tmp_path / "bad")


def test_the_packaged_card_records_the_packaged_recipe():
    recipe = training.load_click_recipe("click-any-2d")
    card = read_card(clicknet.packaged_card())
    assert card.raw["training"]["recipe"] == recipe.raw
    assert card.raw["training"]["steps"] == recipe.raw["train"]["steps"]
    assert card.raw["interactive"]["threads"] == 1


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_the_recipe_regenerates_the_packaged_weights(tmp_path):
    """Spec §7 check 7 (about 15 min on one thread): same recipe, same sha256 on the same machine."""
    out = training.train_click_model("click-any-2d", tmp_path / "m")
    assert _sha(out / "weights.pt") == read_card(clicknet.packaged_card()).weights_sha256
