"""The "translator" recipe: train Gupta et al.'s UNIT on bone phantoms and measure it (spec §1).

A recipe looks like ``{"name": "lesion-unit-bone", "kind": "translator", "data": {"seed": 0,
"lesion": 30, "healthy": 300, "s": [1, 2], "n": 5, "shape": [64, 128], "crops": 1}, "train":
{...UnitConfig fields...}, "evaluation": {"lesion": 20, "healthy": 100, "n": 3}}``. The trainer
writes ``weights.pt`` (E_h and G_l only: what translation needs) and ``test_data.npz`` and returns
what the model card records. Metrics come from held-out phantoms (their own seeds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from medloop.plugins.lesions.checks import LesionInputError

WEIGHTS_FILE = "weights.pt"
TEST_DATA_FILE = "test_data.npz"
ARCHITECTURE = "medloop.plugins.lesions.unit:build_translator_modules"
#: Translated centres darker than the input by more than this count as "darkened".
DARKEN = 0.05
DATA_DEFAULTS: dict[str, Any] = {"seed": 0, "lesion": 30, "healthy": 300, "s": [1, 2], "n": 5, "shape": [64, 128], "crops": 1,
                                 "lesions": {}, "placement": "random"}
EVAL_DEFAULTS: dict[str, Any] = {"lesion": 20, "healthy": 100, "n": 3}


def unit_config(train: dict[str, Any]) -> Any:
    """A :class:`~medloop.plugins.lesions.unit.UnitConfig` from a recipe's ``train`` section."""
    from medloop.plugins.lesions.unit import UnitConfig

    unknown = sorted(set(train) - {f.name for f in fields(UnitConfig)})
    if unknown:
        raise LesionInputError(f"translator recipe has unknown train settings: {', '.join(unknown)}")
    settings = dict(train)
    if "betas" in settings:
        settings["betas"] = tuple(settings["betas"])
    return UnitConfig(**settings)


def _section(raw: dict[str, Any], key: str, defaults: dict[str, Any]) -> dict[str, Any]:
    from medloop.models.plugin_recipes import recipe_section

    return recipe_section(raw, key, defaults, LesionInputError, "translator recipe")


def _phantom_sets(data: dict[str, Any], evaluation: dict[str, Any]) -> list[list[Any]]:
    """Train lesion, train healthy, test lesion, test healthy bone phantoms (four seeds from one)."""
    from medloop.plugins.lesions.phantoms import phantom_set, with_spec

    seeds = np.random.SeedSequence(int(data["seed"])).generate_state(4, dtype=np.uint32)
    shape = tuple(int(v) for v in data["shape"])
    counts = (data["lesion"], data["healthy"], evaluation["lesion"], evaluation["healthy"])
    # The lesion look ("lesions": LesionSpec fields, e.g. amplitude) changes only the lesion sets.
    spec = with_spec("bone", **{k: tuple(v) if isinstance(v, list) else v for k, v in data["lesions"].items()})
    return [phantom_set("bone", int(c), int(sd), 1.0 if k % 2 == 0 else 0.0, shape=shape, lesions=spec)
            for k, (c, sd) in enumerate(zip(counts, seeds))]


def regions(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (size, size) masks: the centre square (side size/4; every crop's centre lies in its
    lesion box) and the outer border ring (width size/8)."""
    centre = np.zeros((size, size), bool)
    q, r = size // 2 - size // 8, max(1, size // 8)
    centre[q:size - q, q:size - q] = True
    ring = np.ones((size, size), bool)
    ring[r:size - r, r:size - r] = False
    return centre, ring


def change_metrics(before: np.ndarray, after: np.ndarray, prefix: str = "") -> dict[str, float]:
    """Mean centre change, fraction of patches whose centre darkens by > 0.05, and mean |change|
    in the border ring and over the whole patch, for (N, S, S) ``before`` -> ``after``."""
    centre, ring = regions(before.shape[-1])
    diff = after.astype(np.float64) - before.astype(np.float64)
    per_patch = diff[:, centre].mean(axis=1)
    return {f"{prefix}centre_change_mean": round(float(per_patch.mean()), 4),
            f"{prefix}centre_darkened_fraction": round(float(np.mean(per_patch < -DARKEN)), 4),
            f"{prefix}border_change_abs_mean": round(float(np.abs(diff[:, ring]).mean()), 4),
            f"{prefix}change_abs_mean": round(float(np.abs(diff).mean()), 4)}


def evaluate_unit(model: Any, lesion_test: list[Any], healthy_test: list[Any], config: Any, evaluation: dict[str, Any],
                  data: dict[str, Any]) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Held-out metrics of a trained UNIT: its h->l translations vs the input (``translated_``),
    its h->h reconstructions as a control (``recon_``), and real lesions vs their healthy twins
    (``real_``); also returns the healthy test patches and their translations."""
    import torch

    from medloop.plugins.lesions.patches import cut, lesion_crops, translator_patches
    from medloop.plugins.lesions.unit import UnitTranslator

    seed = int(data["seed"]) + 7919
    healthy, _ = translator_patches(lesion_test, healthy_test, data["s"], int(evaluation["n"]), config.size, seed,
                                    placement=data["placement"])
    translated = UnitTranslator(model, config.size).translate(healthy)
    with torch.inference_mode():
        x = torch.from_numpy(healthy[:, None]) * 2.0 - 1.0
        recon = np.clip((model["G_h"].decode(model["E_h"](x), x)[:, 0].numpy() + 1.0) / 2.0, 0.0, 1.0)
    crops = lesion_crops(lesion_test, data["s"], np.random.default_rng(seed), placement=data["placement"])
    real = np.stack([cut(lesion_test[i].image, c, config.size) for i, c in crops])
    twin = np.stack([cut(lesion_test[i].healthy, c, config.size) for i, c in crops])
    metrics = {"test_healthy_patches": int(len(healthy)), "test_lesion_patches": int(len(real)),
               **change_metrics(healthy, translated, "translated_"), **change_metrics(healthy, recon, "recon_"),
               **change_metrics(twin, real, "real_")}
    return metrics, healthy, translated


def train_translator_recipe(raw: dict[str, Any], out: Path, progress: Callable[..., None] | None = None,
                            should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train the recipe's UNIT on bone phantoms into ``out``; returns config, steps, files,
    held-out metrics and the inference architecture (see the module docstring)."""
    from medloop.app.engine.jobs import JobCancelled
    from medloop.app.io.atomic import atomic_torch_save
    from medloop.plugins.lesions.patches import translator_patches
    from medloop.plugins.lesions.unit import train_unit

    if raw.get("kind", "translator") != "translator":
        raise LesionInputError(f"recipe kind {raw.get('kind')!r} is not 'translator'")
    data, evaluation = _section(raw, "data", DATA_DEFAULTS), _section(raw, "evaluation", EVAL_DEFAULTS)
    config = unit_config(raw.get("train") or {})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lesion_train, healthy_train, lesion_test, healthy_test = _phantom_sets(data, evaluation)
    healthy, lesion = translator_patches(lesion_train, healthy_train, data["s"], int(data["n"]), config.size,
                                         int(data["seed"]), int(data["crops"]), data["placement"])
    result = train_unit(healthy, lesion, config, progress, should_stop, str(out / "checkpoint.pt"))
    if result.stopped:
        raise JobCancelled(f"training stopped after {result.steps_done} steps; no model written")
    metrics, test_in, test_out = evaluate_unit(result.model, lesion_test, healthy_test, config, evaluation, data)
    metrics.update(train_healthy_patches=int(len(healthy)), train_lesion_patches=int(len(lesion)))
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()
             if k.split(".", 1)[0] in ("E_h", "G_l")}
    weights = Path(atomic_torch_save(state, out / WEIGHTS_FILE))
    test_data = out / TEST_DATA_FILE
    np.savez_compressed(test_data, input=test_in[:8].astype(np.float32), output=test_out[:8].astype(np.float32))
    return {"config": config.as_dict(), "steps": result.steps_done, "files": {"weights": weights, "test_data": test_data},
            "metrics": metrics, "architecture": {"name": ARCHITECTURE, "kwargs": config.architecture()},
            "data": data, "evaluation": evaluation, "prefix": "", "input_shape": [config.size, config.size],
            "inference": {"placement": data["placement"]}}
