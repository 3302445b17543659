"""The model zoo: packaged models, each a folder in ``resources/models`` with a ``card.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from medloop.app.errors import ResourceError


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: its name, folder and parsed card."""

    name: str
    folder: Path
    card: dict

    @property
    def summary(self) -> str:
        return str(self.card.get("description", ""))


def packaged_models_dir() -> Path:
    return Path(str(files("medloop") / "resources" / "models"))


def list_models(extra_dirs: tuple[Path, ...] = ()) -> list[ModelEntry]:
    """Models found in the packaged zoo and in ``extra_dirs``, sorted by name."""
    entries = []
    for root in (packaged_models_dir(), *extra_dirs):
        if not root.is_dir():
            continue
        for card_path in sorted(root.glob("*/card.json")):
            try:
                card = json.loads(card_path.read_text())
            except ValueError as exc:
                raise ResourceError(f"model card {card_path} is not valid JSON ({exc}); fix or remove it") from None
            entries.append(ModelEntry(card.get("name", card_path.parent.name), card_path.parent, card))
    return sorted(entries, key=lambda e: e.name)
