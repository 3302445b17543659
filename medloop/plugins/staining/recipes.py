"""Train a staining model from a recipe and write its weights, card (with the measured numbers)
and test data: every packaged staining model is reproducible from scikit-image's
``immunohistochemistry()`` image by :func:`train_stain_recipe` (``medloop stain train --recipe``).

Packaged recipes are JSON files in the plugin's ``resources/stain_recipes/`` (listed with their
sha256 in its ``manifest.json``), kept apart from ``resources/recipes/``, which ``medloop train
--recipe`` reads as segmentation recipes. A recipe has ``kind`` "despeckle" or "stain-transfer".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medloop.app.errors import MedloopError
from medloop.models.plugin_recipes import (
    PluginRecipe, RecipeKit, check_bounds, load_plugin_recipe, recipe_dirs, run_plugin_recipe, settings, stopped,
)
from medloop.plugins.staining.zoo import PACKAGE

RECIPE_KIND = "stain_recipes"
WEIGHTS_FILE = "weights.pt"
TEST_DATA_FILE = "test_data.npz"
COMMAND = "medloop stain train --recipe {name} --out DIR"


class StainRecipeError(MedloopError, ValueError):
    """A staining recipe is missing, malformed, or its trained model misses its acceptance numbers."""


StainRecipe = PluginRecipe


def stain_recipe_dirs() -> list[Path]:
    return recipe_dirs(RECIPE_KIND, PACKAGE)


def load_stain_recipe(name_or_path: str | Path) -> StainRecipe:
    """A packaged recipe by name, or a recipe file."""
    return load_plugin_recipe(name_or_path, RECIPE_KIND, PACKAGE, TRAINERS, StainRecipeError, "staining recipe")


def train_stain_recipe(
    name_or_path: str | Path,
    out_dir: str | Path,
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    command: str | None = None,
) -> Path:
    """Train the recipe, measure it on its held-out data, and write ``weights.pt``, ``card.json``
    and ``test_data.npz`` into ``out_dir`` (returned). A stopped run writes no model and raises
    :class:`~medloop.app.engine.jobs.JobCancelled`; a model missing the recipe's ``acceptance``
    numbers is written, then :class:`StainRecipeError` says which number it missed."""
    from medloop.plugins.staining.cards import write_stain_card

    recipe = load_stain_recipe(name_or_path)
    kit = RecipeKit(lambda r, out, p, s: TRAINERS[r.kind](r, out, p, s), write_stain_card,
                    command or COMMAND.format(name=recipe.name), (_check_beats,), StainRecipeError)
    return run_plugin_recipe(recipe, out_dir, kit, progress, should_stop)


def _settings(cls: Any, values: dict[str, Any], recipe: StainRecipe, section: str) -> Any:
    return settings(cls, values, recipe, section, StainRecipeError)


_stopped = stopped


def _save(state: dict[str, Any], out: Path, sample_in: np.ndarray, sample_out: np.ndarray) -> dict[str, Path]:
    from medloop.app.io.atomic import atomic_torch_save

    weights = atomic_torch_save({k: v.detach().cpu().contiguous() for k, v in state.items()}, out / WEIGHTS_FILE)
    test_data = out / TEST_DATA_FILE
    np.savez_compressed(test_data, input=sample_in.astype(np.float32), output=sample_out.astype(np.float32))
    return {"weights": Path(weights), "test_data": test_data}


def _train_despeckle(recipe: StainRecipe, out: Path, progress: Any, should_stop: Any) -> dict[str, Any]:
    from medloop.plugins.staining.deconvolution import despeckle_data
    from medloop.plugins.staining.despeckle import DespeckleConfig, despeckle, train_despeckler
    from medloop.plugins.staining.evaluation import evaluate_despeckler

    raw = recipe.raw
    config = _settings(DespeckleConfig, raw["train"], recipe, "train")
    clean_train, clean_test, noisy_test = despeckle_data(config.sd, int(raw["data"].get("noise_seed", 0)))
    result = train_despeckler([clean_train], config, progress, should_stop, str(out / "checkpoint.pt"))
    _stopped(result)
    model = result.model
    median = bool(raw.get("inference", {}).get("median", True))
    crop = noisy_test[96:160, 96:160]
    files = _save({f"despeckler.{k}": v for k, v in model.state_dict().items()}, out, crop, despeckle(crop, model, median))
    return {"config": config.as_dict(), "steps": result.steps_done, "files": files,
            "metrics": evaluate_despeckler(model, clean_test, noisy_test)}


def _train_transfer(recipe: StainRecipe, out: Path, progress: Any, should_stop: Any) -> dict[str, Any]:
    from medloop.plugins.staining.cyclegan import CycleGANConfig, GeneratorSpec, build_cyclegan, train_cyclegan, translate
    from medloop.plugins.staining.deconvolution import transfer_data
    from medloop.plugins.staining.evaluation import evaluate_transfer
    from medloop.plugins.staining.sampling import PatchSampler

    raw = recipe.raw
    settings = dict(raw["train"])
    masks = tuple(settings.pop("masks", ("otsu", "adaptive")))
    if isinstance(settings.get("betas"), list):
        settings["betas"] = tuple(settings["betas"])
    generator = _settings(GeneratorSpec, raw.get("generator", {}), recipe, "generator")
    config = _settings(CycleGANConfig, {**settings, "generator": generator}, recipe, "train")
    data = transfer_data(raw["data"].get("kind", "gareau"))
    sampler = PatchSampler([data.train_a], [data.train_b], config.patch, config.batch, masks, config.seed)
    beta = float(raw.get("evaluation", {}).get("macenko_apply_beta", 0.15))
    start = build_cyclegan(config)
    cycle_start = evaluate_transfer(start["G"], start["F"], data, normalisers=False)["cycle_l1"]
    result = train_cyclegan(sampler, config, progress, should_stop, str(out / "checkpoint.pt"))
    _stopped(result)
    g = result.model["G"]
    metrics = evaluate_transfer(g, result.model["F"], data, macenko_apply_beta=beta)
    metrics["cycle_l1_step0"] = cycle_start
    metrics["cycle_ratio"] = round(metrics["cycle_l1"] / cycle_start, 4)
    crop = data.test_a[96:160, 96:160]
    state = {k: v for k, v in result.model.state_dict().items() if k.split(".", 1)[0] in ("G", "F")}
    files = _save(state, out, crop, translate(crop, g))
    cfg = config.as_dict()
    cfg["masks"] = list(masks)
    return {"config": cfg, "steps": result.steps_done, "files": files, "metrics": metrics,
            "domains": (data.domain_a, data.domain_b)}


#: recipe kind -> trainer(recipe, out_dir, progress, should_stop) -> what the card records
TRAINERS: dict[str, Callable[..., dict[str, Any]]] = {"despeckle": _train_despeckle, "stain-transfer": _train_transfer}


def _check_beats(acceptance: dict[str, Any], metrics: dict[str, float]) -> list[str]:
    """``beats``: metrics that ``psnr_output`` must exceed (e.g. ["psnr_macenko", "psnr_reinhard"])."""
    return [f"psnr_output {metrics['psnr_output']} <= {other} {metrics[other]}"
            for other in acceptance.get("beats", ()) if metrics["psnr_output"] <= metrics[other]]


def check_acceptance(acceptance: dict[str, Any], metrics: dict[str, float]) -> list[str]:
    """The acceptance numbers ``metrics`` misses. Keys: ``<metric>_min`` / ``<metric>_max``, and
    ``beats``: metrics that ``psnr_output`` must exceed (e.g. ["psnr_macenko", "psnr_reinhard"])."""
    return check_bounds(acceptance, metrics) + _check_beats(acceptance, metrics)
