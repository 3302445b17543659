"""Packaged trackers: recipes, training one from its recipe, held-out evaluation, a checked loader.

A recipe (``resources/recipes/<name>.json``) names a tracker and holds the :class:`~.ppo.TrackerConfig`
of its training run (``config``, nested ``env`` / ``ppo``) and its held-out test (``test``).
``medloop axons train --recipe NAME --out DIR`` runs it (:func:`train_recipe`) and writes
``DIR/actor.pt`` (the actor at its best validation state, stored in float16: half the bytes; the
card's numbers are measured on these weights -- for axon-tracker-si float32 gave 100.0 % / 0.296 px
on the 100 held-out SI images, float16 100.0 % / 0.297 px, though single trace vertices moved by up
to 0.9 px where two steps were nearly tied) and ``DIR/card.json``: name, version, the
weights' sha256, the recipe, the training seconds and the measured validation and held-out
numbers. Packaged trackers live in ``resources/trackers/<name>/``; :func:`load_tracker` refuses a
weight file whose sha256 differs from its card's.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from medloop.plugins.axons.checks import TracingInputError
from medloop.plugins.axons.env import EnvConfig
from medloop.plugins.axons.ppo import PPOConfig, TrackerConfig

PACKAGE_DIR = Path(__file__).resolve().parent
RECIPES_DIR = PACKAGE_DIR / "resources" / "recipes"
TRACKERS_DIR = PACKAGE_DIR / "resources" / "trackers"
DEFAULT_TRACKER = "axon-tracker-si"
WEIGHTS_FILE = "actor.pt"
CARD_FILE = "card.json"
CHECKPOINT_FILE = "checkpoint.pt"
TEST_SEED = 4242  # the held-out images: make_batch(n, size, preset, TEST_SEED), never trained or validated on
PRESETS_REPORTED = ("SI", "SI-RC", "SI-W", "SI-EN", "SI-SN")


class TrackerError(TracingInputError):
    """A tracker recipe or a packaged tracker is missing, malformed or damaged."""


@dataclass(frozen=True)
class TrackerRecipe:
    """A packaged tracker's recipe: its name, the training run and the held-out test."""

    name: str
    version: str
    description: str
    config: TrackerConfig
    test: dict[str, Any]
    raw: dict[str, Any]
    path: Path


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """``cls(**values)`` with unknown keys refused by name."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TrackerError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**values)


def config_from_dict(values: Mapping[str, Any], where: str = "recipe") -> TrackerConfig:
    """A :class:`TrackerConfig` from plain values (``env`` and ``ppo`` nested), unknown keys refused."""
    values = dict(values)
    env = _build(EnvConfig, values.pop("env", {}), f"{where} config.env")
    ppo = _build(PPOConfig, values.pop("ppo", {}), f"{where} config.ppo")
    return _build(TrackerConfig, {**values, "env": env, "ppo": ppo}, f"{where} config")


def recipe_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A recipe file given as a path, or the packaged recipe of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = RECIPES_DIR / f"{name_or_path}.json"
    if packaged.is_file():
        return packaged
    known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.json")))
    raise TrackerError(f"no tracker recipe {str(name_or_path)!r}: not a file, nor a packaged recipe ({known})")


def load_recipe(name_or_path: str | os.PathLike[str]) -> TrackerRecipe:
    """A packaged tracker recipe by name, or a recipe file; malformed ones are refused."""
    path = recipe_path(name_or_path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrackerError(f"tracker recipe {path} cannot be read ({exc}); fix it") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("config"), dict) or "name" not in raw:
        raise TrackerError(f"tracker recipe {path} needs a 'name' and a 'config' object (TrackerConfig fields)")
    try:
        config = config_from_dict(raw["config"], f"tracker recipe {path}")
    except TypeError as exc:
        raise TrackerError(f"tracker recipe {path}: {exc}") from None
    test = {"images": 100, "seed": TEST_SEED, "presets": list(PRESETS_REPORTED), **raw.get("test", {})}
    return TrackerRecipe(str(raw["name"]), str(raw.get("version", "1")), str(raw.get("description", "")), config, test, raw, path)


def evaluate_on_preset(actor: Any, preset: str, images: int, size: int, seed: int, max_steps: int) -> dict[str, float]:
    """Deterministic traces on ``images`` synthetic ``preset`` images seeded by ``seed``, each from
    its start point until within 3 px of its far end or ``max_steps`` (the paper's protocol, as in
    training): coverage %, error / SD px, lost stretches, entropy on / off track (see
    :func:`.ppo.evaluate_policy`)."""
    from medloop.plugins.axons.env import episode_from_axon
    from medloop.plugins.axons.ppo import evaluate_policy
    from medloop.plugins.axons.synth import make_batch

    episodes = [episode_from_axon(a) for a in make_batch(images, size, preset, seed)]
    out = evaluate_policy(actor, episodes, EnvConfig(max_steps=max_steps))
    return {k[len("val_"):]: v for k, v in out.items() if k not in ("val_score", "val_return")}


def held_out_numbers(actor: Any, recipe: TrackerRecipe, images: int | None = None) -> dict[str, dict[str, float]]:
    """The recipe's held-out test per preset (``images`` overrides its count)."""
    test, cfg = recipe.test, recipe.config
    n = int(images or test["images"])
    return {
        p: {k: round(float(v), 4) for k, v in evaluate_on_preset(actor, p, n, cfg.size, int(test["seed"]), cfg.env.max_steps).items()}
        for p in test["presets"]
    }


def save_half(actor: Any, path: Path, config: Mapping[str, Any]) -> Path:
    """The actor's weights in float16 (loaded back as float32 by :func:`.nets.load_actor`)."""
    from medloop.app.io.atomic import atomic_torch_save
    from medloop.plugins.axons.nets import ACTOR_FORMAT

    state = {k: v.detach().cpu().half() for k, v in actor.state_dict().items()}
    atomic_torch_save({"format": ACTOR_FORMAT, "actor": state, "config": dict(config)}, path, suffix=".tmp")
    return path


def plain_json(value: Any) -> Any:
    """``value`` with NaN as None (null): a card stays strict JSON (NaN = "never measured", e.g. no off-track step)."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    return value


def tracker_card(name: str, version: str, description: str, weights: Path, training: dict[str, Any],
                 metrics: dict[str, Any], parent: dict[str, Any] | None = None) -> dict[str, Any]:
    """A tracker's model card (task "policy"): the weights' sha256, how it was trained, what it measured."""
    from medloop.app.io.hashing import sha256_file
    from medloop.models.card import NOT_FOR_DIAGNOSIS

    return {
        "format_version": "medloop-card-1", "task": "policy", "name": name, "version": version, "parent": parent,
        "description": description, "authors": [{"name": "medloop developers"}],
        "license": "BSD-3-Clause (weights); training data: synthetic, generated by medloop",
        "architecture": {"name": "medloop.plugins.axons.nets:Actor", "kwargs": {}},
        "weights": {"format": "pytorch_state_dict", "dtype": "float16", "source": weights.name, "sha256": sha256_file(weights)},
        "inputs": [{"name": "state", "shape": [12, 11, 11], "data_type": "float32"}],
        "outputs": [{"name": "beta_parameters", "shape": [4], "description": "alpha_x, beta_x, alpha_y, beta_y > 1"}],
        "policy": {"observation": {"shape": [12, 11, 11]}, "action": {"type": "continuous", "shape": [2], "range_px": [-4.0, 4.0]}},
        "medical": {"modality": "two-photon microscopy, 2-D maximum projections",
                    "intended_use": "Research: axon centreline tracing from a clicked seed, with a per-step uncertainty.",
                    "limitations": "Small-scale training (64 x 64 synthetic images unless fine-tuned); check traces on real data.",
                    "not_for_diagnosis": NOT_FOR_DIAGNOSIS},
        "training": plain_json(training),
        "metrics": plain_json(metrics),
    }


def training_record(result: Any, config: TrackerConfig, seconds: float) -> dict[str, Any]:
    """What a card keeps of a run: seconds, the best iteration and its validation, every validation."""
    history = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k.startswith("val_") or k == "epoch"}
               for r in result.history]
    best = result.loop.best_epoch
    return {"seconds": round(seconds, 1), "best_iteration": best * config.val_every,
            "validation": history[best - 1] if best else {}, "history": history}


def _recipe_card(recipe: TrackerRecipe, weights: Path, result: Any, seconds: float, held_out: dict[str, Any]) -> dict[str, Any]:
    training = {"recipe": recipe.raw, "command": f"medloop axons train --recipe {recipe.name} --out DIR",
                **training_record(result, recipe.config, seconds)}
    metrics = {"held_out": {"images": int(recipe.test["images"]), "seed": int(recipe.test["seed"]),
                            "size": recipe.config.size, "max_steps": recipe.config.env.max_steps, "presets": held_out}}
    return tracker_card(recipe.name, recipe.version, recipe.description, weights, training, metrics)


def train_recipe(
    recipe: TrackerRecipe,
    out: str | os.PathLike[str],
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
) -> Path:
    """Train ``recipe``'s tracker into ``out`` (``actor.pt``, ``card.json``, the loop's checkpoint),
    measure it on the held-out images of every preset and return the card's path."""
    from medloop.models.card import write_card
    from medloop.plugins.axons.nets import load_actor
    from medloop.plugins.axons.ppo import train_tracker

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = train_tracker(recipe.config, progress, should_stop, checkpoint=folder / CHECKPOINT_FILE, resume=resume)
    seconds = time.perf_counter() - started
    weights = save_half(result.actor, folder / WEIGHTS_FILE, recipe.config.as_dict())
    held_out = held_out_numbers(load_actor(weights), recipe)  # the packaged (float16) weights themselves
    return write_card(_recipe_card(recipe, weights, result, seconds, held_out), folder / CARD_FILE)


@dataclass(frozen=True)
class Tracker:
    """A loaded tracker: the actor (eval mode), its card (None for a bare weight file) and where it came from."""

    actor: Any
    card: dict[str, Any] | None
    path: Path

    @property
    def name(self) -> str:
        return str(self.card["name"]) if self.card else self.path.name

    @property
    def sha256(self) -> str:
        from medloop.app.io.hashing import sha256_file

        return str(self.card["weights"]["sha256"]) if self.card else sha256_file(self.path)


def packaged_trackers() -> list[str]:
    """Names of the trackers shipped in ``resources/trackers``."""
    return sorted(p.parent.name for p in TRACKERS_DIR.glob(f"*/{CARD_FILE}"))


def _tracker_folder(name_or_path: str | os.PathLike[str]) -> Path | None:
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.is_file():
        return None
    if (TRACKERS_DIR / str(name_or_path) / CARD_FILE).is_file():
        return TRACKERS_DIR / str(name_or_path)
    known = ", ".join(packaged_trackers()) or "none"
    raise TrackerError(f"no tracker {str(name_or_path)!r}: not a file or folder, nor a packaged tracker ({known})")


def load_tracker(name_or_path: str | os.PathLike[str] = DEFAULT_TRACKER) -> Tracker:
    """A packaged tracker by name, a tracker folder (``card.json`` + weights, sha256 checked) or
    an actor / training-checkpoint file; a damaged or replaced weight file is refused."""
    from medloop.app.io.hashing import sha256_file
    from medloop.plugins.axons.nets import load_actor

    folder = _tracker_folder(name_or_path)
    if folder is None:  # a bare weight file: nothing to check it against
        return Tracker(load_actor(Path(name_or_path)), None, Path(name_or_path))
    card_path = folder / CARD_FILE
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        weights = folder / card["weights"]["source"]
        expected = str(card["weights"]["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrackerError(f"tracker folder {folder} has no readable {CARD_FILE} with weights.source and .sha256 ({exc})") from None
    if not weights.is_file():
        raise TrackerError(f"tracker weights {weights} are missing; reinstall medloop or retrain with 'medloop axons train'")
    if sha256_file(weights) != expected:
        raise TrackerError(
            f"tracker weights {weights} do not match the sha256 in {card_path} (damaged or replaced); "
            "reinstall medloop or retrain with 'medloop axons train'")
    return Tracker(load_actor(weights), card, weights)


def recipe_with(recipe: TrackerRecipe, **changes: Any) -> TrackerRecipe:
    """``recipe`` with some :class:`TrackerConfig` fields changed (e.g. ``iterations`` for a short run)."""
    return replace(recipe, config=replace(recipe.config, **changes))

