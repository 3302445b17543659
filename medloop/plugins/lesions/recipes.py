"""Train a lesion model from a recipe (``medloop lesions train --recipe NAME --out DIR``).

Packaged recipes are JSON files in the plugin's ``resources/lesion_recipes/`` (sha256s in its
``manifest.json``), trained on the seeded phantoms only, so every packaged model is reproducible
with nothing downloaded. A recipe's ``kind`` picks its trainer: ``translator`` (UNIT on bone
patches), ``classifier`` (the filter of Gupta et al.), ``anomaly`` (Baur et al.'s autoencoder,
calibrated on labelled validation phantoms).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medloop.app.errors import MedloopError
from medloop.models.plugin_recipes import PluginRecipe, RecipeKit, load_plugin_recipe, run_plugin_recipe
from medloop.plugins.lesions.zoo import PACKAGE

RECIPE_KIND = "lesion_recipes"
COMMAND = "medloop lesions train --recipe {name} --out DIR"
#: recipe kind -> "module:function(raw, out_dir, progress, should_stop) -> what the card records"
TRAINERS = {
    "translator": "medloop.plugins.lesions.unit_training:train_translator_recipe",
    "classifier": "medloop.plugins.lesions.classifier_training:train_classifier_recipe",
    "anomaly": "medloop.plugins.lesions.anomaly_training:train_anomaly_recipe",
    "segmenter": "medloop.plugins.lesions.student:train_student_recipe",
}


class LesionRecipeError(MedloopError, ValueError):
    """A lesion recipe is missing, malformed, or its trained model misses its acceptance numbers."""


def load_lesion_recipe(name_or_path: str | Path) -> PluginRecipe:
    """A packaged recipe by name, or a recipe file."""
    return load_plugin_recipe(name_or_path, RECIPE_KIND, PACKAGE, TRAINERS, LesionRecipeError, "lesion recipe")


def _trainer(recipe: PluginRecipe, out: Path, progress, should_stop):
    from medloop.app.plugin import resolve

    return resolve(TRAINERS[recipe.kind])(recipe.raw, out, progress, should_stop)


def with_augmentation(recipe: PluginRecipe, augment: dict[str, Any], kinds: tuple[str, ...]) -> PluginRecipe:
    """``recipe`` with its ``augment`` section replaced (``--augment-lesions``); only ``kinds`` take it."""
    if recipe.kind not in kinds:
        raise LesionRecipeError(
            f"--augment-lesions trains a lesion {' or '.join(kinds)} recipe (e.g. lesion-classifier-bone); "
            f"{recipe.name} is {'an' if recipe.kind[0] in 'aeiou' else 'a'} {recipe.kind} recipe")
    return PluginRecipe({**recipe.raw, "augment": {**recipe.raw.get("augment", {}), **augment}}, recipe.path)


def train_lesion_recipe(
    name_or_path: str | Path, out_dir: str | Path, progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None, command: str | None = None,
    augment: dict[str, Any] | None = None, kinds: tuple[str, ...] = ("classifier",),
) -> Path:
    """Train the recipe into ``out_dir`` (weights, card with the measured numbers, test data);
    a model missing the recipe's acceptance numbers is written, then :class:`LesionRecipeError`."""
    from medloop.plugins.lesions.cards import write_lesion_card

    recipe = load_lesion_recipe(name_or_path)
    if augment is not None:
        recipe = with_augmentation(recipe, augment, kinds)
    kit = RecipeKit(_trainer, write_lesion_card, command or COMMAND.format(name=recipe.name), error=LesionRecipeError)
    return run_plugin_recipe(recipe, out_dir, kit, progress, should_stop)
