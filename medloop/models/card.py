"""Model cards: a subset of the bioimage.io model description plus medical fields.

A card is a JSON file beside the weights. Required fields are checked on load so that a bad
card fails with a message naming the card and the field, never later inside a run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medloop.app.errors import MedloopError

CARD_FILE = "card.json"
NOT_FOR_DIAGNOSIS = "Research and demonstration use only; not for diagnosis or treatment decisions."


class CardError(MedloopError):
    """A model card is missing, unreadable or lacks a required field."""


REQUIRED = ("name", "description", "authors", "license", "architecture", "weights", "inputs", "outputs", "medical")


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
        return {int(k): str(v) for k, v in self.raw["medical"]["classes"].items()}

    @property
    def spatial_dims(self) -> int:
        return len(self.raw["inputs"][0]["axes"]) - 2  # axes like "bczyx" / "bcyx"

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
    """Check the required fields of a parsed card; ``where`` names it in messages."""
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise CardError(f"model card {where} lacks {', '.join(missing)}; see the card of brain-tissue-t1 for the format")
    for key, sub in (("architecture", "name"), ("weights", "source"), ("weights", "sha256"), ("medical", "classes")):
        if not isinstance(raw[key], dict) or sub not in raw[key]:
            raise CardError(f"model card {where} lacks {key}.{sub}; see the card of brain-tissue-t1 for the format")
    if not raw["inputs"] or "axes" not in raw["inputs"][0] or raw["inputs"][0]["axes"] not in ("bcyx", "bczyx"):
        raise CardError(f"model card {where}: inputs[0].axes must be 'bcyx' or 'bczyx'")
    return ModelCard(raw=raw, path=Path(where) if where else None)


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
