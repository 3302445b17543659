"""Model cards: a subset of the bioimage.io model description plus medical fields.

A card is a JSON file beside the weights. Required fields are checked on load so that a bad
card fails with a message naming the card and the field, never later inside a run.

Models are data, by task. A card's ``task`` (``segmentation`` when absent, so older cards stay
valid; ``image-to-image``, ``synthesis``, ``classification``, ``policy``,
``interactive``) picks its validator from
:data:`TASKS`: segmentation needs classes and ``bcyx``/``bczyx`` axes, image-to-image and synthesis
need input and output axes and channels but no classes, a classifier needs image input axes and
one output score per named class, a policy needs an observation and an action spec, a click
network (``interactive``) needs image axes and whether it is enabled, with the reason.
The architecture is named like bioimage.io's ``architecture.callable``, restricted to medloop's
own code: a registered short name (:data:`medloop.models.nets.ARCHITECTURES`) or a
``"<package>.<module>:<Callable>"`` entry in a module under ``medloop.`` (a plugin's own nets) or
under an installed plugin package (:func:`medloop.app.discovery.plugin_packages`); anything else
is refused here, before any import.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medloop.app.errors import MedloopError

CARD_FILE = "card.json"
NOT_FOR_DIAGNOSIS = "Research and demonstration use only; not for diagnosis or treatment decisions."


class CardError(MedloopError):
    """A model card is missing, unreadable or lacks a required field."""


REQUIRED = ("name", "description", "authors", "license", "architecture", "weights", "inputs", "outputs", "medical")
DEFAULT_TASK = "segmentation"
FORMAT_HINT = "see the card of brain-tissue-t1 for the format"
#: ``module:Callable`` architecture entries must name a callable in medloop's own modules.
ARCHITECTURE_ENTRY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def is_own_architecture(name: str) -> bool:
    """True for a ``module:Callable`` entry inside medloop or an installed plugin package."""
    from medloop.app.discovery import plugin_packages

    if not ARCHITECTURE_ENTRY.match(name):
        return False
    module = name.split(":")[0]
    return any(module == root or module.startswith(root + ".") for root in ("medloop", *plugin_packages()))


@dataclass(frozen=True)
class ModelCard:
    """The parsed card; ``raw`` keeps every field (also those medloop does not interpret)."""

    raw: dict[str, Any]
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.raw["name"])

    @property
    def task(self) -> str:
        """What the model does (decides how the card is validated and the model run)."""
        return str(self.raw.get("task", DEFAULT_TASK))

    @property
    def version(self) -> str:
        return str(self.raw.get("version", "1"))

    @property
    def description(self) -> str:
        return str(self.raw["description"])

    @property
    def architecture(self) -> tuple[str, dict[str, Any]]:
        arch = self.raw["architecture"]
        return str(arch["name"]), dict(arch.get("kwargs", {}))

    @property
    def weights_file(self) -> str:
        return str(self.raw["weights"]["source"])

    @property
    def weights_sha256(self) -> str:
        return str(self.raw["weights"]["sha256"])

    @property
    def classes(self) -> dict[int, str]:
        """The class table (empty for tasks without classes)."""
        return {int(k): str(v) for k, v in self.raw["medical"].get("classes", {}).items()}

    @property
    def spatial_dims(self) -> int:
        """2 or 3 for image axes like "bcyx" / "bczyx"; 0 when the input has no axes (a policy)."""
        axes = self.raw["inputs"][0].get("axes", "") if self.raw["inputs"] else ""
        return max(len(axes) - 2, 0)

    @property
    def in_channels(self) -> int:
        return int(self.raw["inputs"][0].get("channels", 1))

    @property
    def spacing(self) -> tuple[float, ...] | None:
        """Expected input spacing in (x, y[, z]) order and mm, or None if any spacing is fine."""
        s = self.raw["medical"].get("expected_spacing_mm")
        return tuple(float(v) for v in s) if s else None

    @property
    def orientation(self) -> str | None:
        """ITK orientation code the network was trained in (e.g. "LPS"), if it matters."""
        return self.raw["medical"].get("orientation")

    @property
    def slice_axis(self) -> int | None:
        """For a 2-D model run on volumes slice by slice: the array axis it slices (0 = z)."""
        axis = self.raw["medical"].get("slice_axis")
        return None if axis is None else int(axis)

    def accepts_ndim(self, ndim: int) -> bool:
        return ndim == self.spatial_dims or (self.spatial_dims == 2 and ndim == 3 and self.slice_axis is not None)

    @property
    def normalisation(self) -> dict[str, Any]:
        return dict(self.raw["inputs"][0].get("preprocessing", {"name": "none"}))

    @property
    def inference(self) -> dict[str, Any]:
        return dict(self.raw.get("inference", {}))


def validate_card(raw: dict[str, Any], where: str) -> ModelCard:
    """Check a parsed card: the fields every card needs, then its task's own; ``where`` names it
    in messages."""
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise CardError(f"model card {where} lacks {', '.join(missing)}; {FORMAT_HINT}")
    task = raw.get("task", DEFAULT_TASK)
    if not isinstance(task, str) or task not in TASKS:
        raise CardError(f"model card {where}: unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    _require(raw, where, (("architecture", "name"), ("weights", "source"), ("weights", "sha256")))
    check_architecture(str(raw["architecture"]["name"]), where)
    TASKS[task](raw, where)
    return ModelCard(raw=raw, path=Path(where) if where else None)


def check_architecture(name: str, where: str) -> None:
    """A registered short name (checked when the network is built) or a ``module:Callable`` entry
    inside medloop; a dotted or ``module:Callable`` name outside medloop raises :class:`CardError`."""
    if ("." in name or ":" in name) and not is_own_architecture(name):
        raise CardError(architecture_refusal(name, where))


def architecture_refusal(name: str, where: str | None = None) -> str:
    """Why ``name`` is refused (the card ``where`` names it, if known)."""
    return (
        (f"model card {where}: " if where else "")
        + f"architecture {name!r} is outside medloop and its plugins; name a registered architecture "
        "or a callable in medloop's or a plugin's own modules ('<package>.<module>:<Callable>')"
    )


def _require(raw: dict[str, Any], where: str, pairs: tuple[tuple[str, str], ...]) -> None:
    for key, sub in pairs:
        if not isinstance(raw[key], dict) or sub not in raw[key]:
            raise CardError(f"model card {where} lacks {key}.{sub}; {FORMAT_HINT}")


def _segmentation(raw: dict[str, Any], where: str) -> None:
    _require(raw, where, (("medical", "classes"),))
    if not raw["inputs"] or "axes" not in raw["inputs"][0] or raw["inputs"][0]["axes"] not in ("bcyx", "bczyx"):
        raise CardError(f"model card {where}: inputs[0].axes must be 'bcyx' or 'bczyx'")


def _image_to_image(raw: dict[str, Any], where: str) -> None:
    for side in ("inputs", "outputs"):
        spec = raw[side][0] if isinstance(raw[side], list) and raw[side] and isinstance(raw[side][0], dict) else {}
        if spec.get("axes") not in ("bcyx", "bczyx"):
            raise CardError(f"model card {where}: {side}[0].axes must be 'bcyx' or 'bczyx' for task {raw.get('task')!r}")
        if not isinstance(spec.get("channels"), int) or spec["channels"] < 1:
            raise CardError(f"model card {where}: {side}[0].channels must be a positive whole number for task {raw.get('task')!r}")
    if raw["inputs"][0]["axes"] != raw["outputs"][0]["axes"]:
        raise CardError(f"model card {where}: inputs[0].axes and outputs[0].axes must match for task {raw.get('task')!r}")


def _classification(raw: dict[str, Any], where: str) -> None:
    """An image classifier: image input axes, and outputs[0] one score per class (axes ``bc``)."""
    spec = raw["inputs"][0] if isinstance(raw["inputs"], list) and raw["inputs"] and isinstance(raw["inputs"][0], dict) else {}
    if spec.get("axes") not in ("bcyx", "bczyx"):
        raise CardError(f"model card {where}: inputs[0].axes must be 'bcyx' or 'bczyx' for task 'classification'")
    out = raw["outputs"][0] if isinstance(raw["outputs"], list) and raw["outputs"] and isinstance(raw["outputs"][0], dict) else {}
    if out.get("axes") != "bc" or not isinstance(out.get("classes"), list) or not out["classes"]:
        raise CardError(f"model card {where}: outputs[0] must have axes 'bc' and its class names for task 'classification'")


def _policy(raw: dict[str, Any], where: str) -> None:
    policy = raw.get("policy")
    if not isinstance(policy, dict) or not all(isinstance(policy.get(k), dict) for k in ("observation", "action")):
        raise CardError(f"model card {where} lacks policy.observation and policy.action; {FORMAT_HINT}")
    shape = policy["observation"].get("shape")
    if not (isinstance(shape, list) and shape and all(isinstance(n, int) and n > 0 for n in shape)):
        raise CardError(f"model card {where}: policy.observation.shape must be a list of positive whole numbers")
    action = policy["action"]
    if action.get("type") == "discrete":
        if not (isinstance(action.get("n"), int) and action["n"] > 0):
            raise CardError(f"model card {where}: a discrete policy.action needs n, the number of actions")
    elif action.get("type") == "continuous":
        if not (isinstance(action.get("shape"), list) and action["shape"]):
            raise CardError(f"model card {where}: a continuous policy.action needs its shape")
    else:
        raise CardError(f"model card {where}: policy.action.type must be 'discrete' or 'continuous'")


def _interactive(raw: dict[str, Any], where: str) -> None:
    """A click network: image + guidance input axes and channels, and an ``interactive`` section
    saying whether the engine may be used (``enabled``) and why (``reason``)."""
    spec = raw["inputs"][0] if isinstance(raw["inputs"], list) and raw["inputs"] and isinstance(raw["inputs"][0], dict) else {}
    if spec.get("axes") not in ("bcyx", "bczyx") or not isinstance(spec.get("channels"), int):
        raise CardError(f"model card {where}: inputs[0] needs axes 'bcyx' or 'bczyx' and its channels for task 'interactive'")
    section = raw.get("interactive")
    if not isinstance(section, dict) or not isinstance(section.get("enabled"), bool) or not isinstance(section.get("reason"), str):
        raise CardError(f"model card {where} lacks interactive.enabled (true/false) and interactive.reason; {FORMAT_HINT}")


#: Task -> validator of the task's own fields (after the common ones). Add a task here.
TASKS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "segmentation": _segmentation,
    "image-to-image": _image_to_image,
    "synthesis": _image_to_image,
    "classification": _classification,
    "policy": _policy,
    "interactive": _interactive,
}


def read_card(path: Path) -> ModelCard:
    """Parse and validate a card file."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CardError(f"cannot read model card {path}: {exc.strerror or exc}; check the path") from None
    except ValueError as exc:
        raise CardError(f"model card {path} is not valid JSON ({exc}); fix or remove it") from None
    if not isinstance(raw, dict):
        raise CardError(f"model card {path} must be a JSON object")
    return validate_card(raw, str(path))


def write_card(card: dict[str, Any], path: Path) -> Path:
    """Write a card atomically (validated first)."""
    from medloop.app.io.atomic import atomic_target

    validate_card(card, str(path))
    with atomic_target(path, suffix=".json") as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(card, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return Path(path)
