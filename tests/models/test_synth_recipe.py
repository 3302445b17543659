"""The robust brain model's recipe (``brain-tissue``, data.synth) trains reproducibly: the same
seed writes the same weights (sha256), a recipe with an unknown synthesis setting is refused."""

from __future__ import annotations

import copy
import json

import pytest

from medloop.models.recipes import Recipe, RecipeError, load_recipe, train_recipe


def _tiny(recipe: Recipe) -> Recipe:
    raw = copy.deepcopy(recipe.raw)
    raw["train"].update(epochs=1, steps_per_epoch=4, batch_size=2, patch_size=[64, 64])
    raw["data"]["synth"].update(volumes=2, refresh=[1, 2])
    raw["architecture"]["kwargs"]["features"] = [4, 8]
    return Recipe(raw, recipe.path)


def test_same_seed_same_weights(tmp_path):
    recipe = _tiny(load_recipe("brain-tissue"))
    assert recipe.raw["architecture"]["kwargs"]["norm"] == "batch"
    cards = []
    for run in ("a", "b"):
        train_recipe(recipe, tmp_path / run, command="test")
        cards.append(json.loads((tmp_path / run / "card.json").read_text()))
    assert cards[0]["weights"]["sha256"] == cards[1]["weights"]["sha256"]
    assert cards[0]["medical"]["sequence"].startswith("any MR contrast")


def test_unknown_synthesis_setting_is_refused(tmp_path):
    recipe = _tiny(load_recipe("brain-tissue"))
    recipe.raw["data"]["synth"]["config"] = {"p_skul": 0.2}
    with pytest.raises(RecipeError, match=r"unknown synthesis settings \['p_skul'\]"):
        train_recipe(recipe, tmp_path / "x", command="test")
