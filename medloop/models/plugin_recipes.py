"""Training recipes that a plugin keeps beside its own packaged models (see :mod:`plugin_zoo`).

A plugin recipe is a JSON file in ``<package>/resources/<kind>/`` (with a ``manifest.json`` of
sha256s) holding at least ``name``, ``kind``, ``description``, ``data`` and ``train``; the plugin
maps each ``kind`` to its trainer. These helpers find and parse a recipe, run its trainer into an
output folder through the plugin's card writer, and check the measured numbers against the
recipe's ``acceptance`` bounds (``<metric>_min`` / ``<metric>_max``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from medloop.app.errors import MedloopError

RECIPE_KEYS = ("name", "kind", "description", "data", "train")


@dataclass(frozen=True)
class PluginRecipe:
    raw: dict[str, Any]
    path: Path

    @property
    def name(self) -> str:
        return str(self.raw["name"])

    @property
    def kind(self) -> str:
        return str(self.raw["kind"])


def recipe_dirs(kind_dir: str, package: str) -> list[Path]:
    from medloop.app.discovery import plugin_resource_dirs

    return plugin_resource_dirs(kind_dir, plugins=(package,))


def load_plugin_recipe(
    name_or_path: str | Path, kind_dir: str, package: str, kinds: Collection[str], error: type[MedloopError], what: str,
) -> PluginRecipe:
    """A packaged recipe by name (``<package>/resources/<kind_dir>/<name>.json``), or a recipe file;
    ``error`` is raised with one line for a missing, malformed or unknown-kind recipe."""
    path = Path(name_or_path)
    folders = recipe_dirs(kind_dir, package)
    if not path.is_file():
        path = next((p for p in (d / f"{name_or_path}.json" for d in folders) if p.is_file()), path)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for d in folders for p in d.glob("*.json") if p.stem != "manifest"))
        raise error(f"no {what} {str(name_or_path)!r}: not a file, nor a packaged recipe ({known})")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise error(f"{what} {path} is not valid JSON ({exc}); fix it") from None
    for key in RECIPE_KEYS:
        if key not in raw:
            raise error(f"{what} {path} lacks {key!r}")
    if raw["kind"] not in kinds:
        raise error(f"{what} {path} has kind {raw['kind']!r}; choose one of {', '.join(kinds)}")
    return PluginRecipe(raw, path)


def settings(cls: Any, values: dict[str, Any], recipe: PluginRecipe, section: str, error: type[MedloopError]) -> Any:
    """``cls(**values)`` (a dataclass), or an error naming the recipe's unknown keys."""
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise error(f"recipe {recipe.path} has unknown {section} settings: {', '.join(unknown)}")
    return cls(**values)


def recipe_section(raw: dict[str, Any], key: str, defaults: dict[str, Any], error: type[MedloopError], what: str) -> dict[str, Any]:
    """``raw[key]`` over ``defaults``; keys the defaults do not know raise ``error`` naming them."""
    given = dict(raw.get(key) or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise error(f"{what} has unknown {key} settings: {', '.join(unknown)}")
    return {**defaults, **given}


def check_bounds(acceptance: dict[str, Any], metrics: dict[str, float]) -> list[str]:
    """The ``<metric>_min`` / ``<metric>_max`` bounds that ``metrics`` misses (other keys ignored)."""
    missed = []
    for key, bound in acceptance.items():
        if key.endswith("_min") and metrics[key[:-4]] < bound:
            missed.append(f"{key[:-4]} {metrics[key[:-4]]} < {bound}")
        elif key.endswith("_max") and metrics[key[:-4]] > bound:
            missed.append(f"{key[:-4]} {metrics[key[:-4]]} > {bound}")
    return missed


@dataclass(frozen=True)
class RecipeKit:
    """How a plugin turns a recipe into a model: ``trainer(recipe, out, progress, should_stop)``
    returns what the card records, ``write_card(raw, trained, out, command)`` writes it,
    ``command`` reproduces it, ``extra_checks`` add acceptance rules, ``error`` is raised for misses."""

    trainer: Callable[..., dict[str, Any]]
    write_card: Callable[[dict[str, Any], dict[str, Any], Path, str], Path]
    command: str
    extra_checks: Sequence[Callable[[dict[str, Any], dict[str, float]], list[str]]] = ()
    error: type[MedloopError] = MedloopError


def run_plugin_recipe(
    recipe: PluginRecipe, out_dir: str | Path, kit: RecipeKit,
    progress: Callable[..., None] | None = None, should_stop: Callable[[], bool] | None = None,
) -> Path:
    """Train ``recipe`` with ``kit.trainer`` into ``out_dir``, write its card, drop the checkpoint,
    then raise ``kit.error`` naming every acceptance number missed (the model stays written, so
    it can be inspected)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    trained = kit.trainer(recipe, out, progress, should_stop)
    trained["seconds"] = round(time.perf_counter() - started, 1)
    kit.write_card(recipe.raw, trained, out, kit.command)
    (out / "checkpoint.pt").unlink(missing_ok=True)
    acceptance = recipe.raw.get("acceptance", {})
    missed = check_bounds(acceptance, trained["metrics"]) + [
        m for check in kit.extra_checks for m in check(acceptance, trained["metrics"])]
    if missed:
        raise kit.error(f"model {recipe.name} in {out} misses its acceptance numbers: {'; '.join(missed)}")
    return out


def plugin_card(recipe: dict[str, Any], trained: dict[str, Any], command: str, task: str,
                io: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> dict[str, Any]:
    """The fields every plugin model's card shares, from its recipe and what its trainer returned
    (``architecture``, ``files`` with ``weights``/``test_data``, ``config``, ``steps``,
    ``seconds``, ``metrics``): name, version, task, kind, authors, licence, weights and test data
    with their sha256, inputs/outputs (``io``), the recipe's ``inference``, the medical fields of
    its ``card`` section, the training record and the measured numbers. Plugins add their own."""
    from medloop.app.io.hashing import sha256_file
    from medloop.models.card import NOT_FOR_DIAGNOSIS

    meta, files = recipe.get("card", {}), trained["files"]
    return {
        "format_version": "medloop-card-1", "name": recipe["name"], "version": str(recipe.get("version", "1")),
        "task": task, "kind": recipe["kind"], "description": recipe["description"],
        "authors": meta.get("authors", ["medloop developers"]), "license": meta.get("license", "BSD-3-Clause"),
        "architecture": trained["architecture"],
        "weights": {"format": "pytorch_state_dict", "source": files["weights"].name, "sha256": sha256_file(files["weights"])},
        "inputs": io[0], "outputs": io[1],
        "test_data": {"source": files["test_data"].name, "sha256": sha256_file(files["test_data"]), "tolerance": 1e-4},
        "inference": dict(recipe.get("inference", {})),
        "medical": {"modality": meta.get("modality", ""), "intended_use": meta.get("intended_use", ""),
                    "limitations": meta.get("limitations", ""), "not_for_diagnosis": NOT_FOR_DIAGNOSIS},
        "training": {"recipe": recipe, "command": command, "config": trained["config"],
                     "steps": trained["steps"], "seconds": trained["seconds"]},
        "metrics": trained["metrics"],
    }


def stopped(result: Any) -> None:
    """Raise :class:`~medloop.app.engine.jobs.JobCancelled` for a stopped training run."""
    if result.stopped:
        from medloop.app.engine.jobs import JobCancelled

        raise JobCancelled(f"training stopped after {result.steps_done} steps; no model written")
