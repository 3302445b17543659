"""Packaged staining models: where they live, how they load (sha256 checked), what they run.

Staining models live in the plugin's ``resources/stain_models/<name>/`` (``card.json``, weights,
test data), **not** in ``resources/models/``: the shared registry
(:func:`medloop.models.registry.list_models`) lists every card under a plugin's
``resources/models`` and the segmentation, correction and review panels offer all of them as
segmentation models. The cards are valid medloop cards (task ``image-to-image``, checked by
:func:`medloop.models.card.read_card`) with a ``kind`` ("stain-transfer" or "despeckle"), the
domains, the recipe and the measured numbers. Weights load with ``weights_only=True`` after their
sha256 is checked; architectures come only from this plugin's own table (:data:`ARCHITECTURES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medloop.app.errors import ResourceError
from medloop.models.card import CARD_FILE, ModelCard, read_card
from medloop.plugins.staining.checks import StainInputError

PACKAGE = "medloop.plugins.staining"
RESOURCE_KIND = "stain_models"
KINDS = ("stain-transfer", "despeckle")
#: The callables a staining card may name (nothing else is ever imported from a card).
ARCHITECTURES = (
    "medloop.plugins.staining.cyclegan:ResUNetGenerator",
    "medloop.plugins.staining.cyclegan:ResNetGenerator",
    "medloop.plugins.staining.despeckle:Despeckler",
)
DIRECTIONS = ("A->B", "B->A")


def stain_model_dirs() -> list[Path]:
    """Every folder of packaged staining models (this plugin's ``resources/stain_models``)."""
    from medloop.app.discovery import plugin_resource_dirs

    return plugin_resource_dirs(RESOURCE_KIND, plugins=(PACKAGE,))


def list_stain_models() -> list[ModelCard]:
    """The cards of the packaged staining models, sorted by name."""
    cards = [read_card(p) for d in stain_model_dirs() for p in sorted(d.glob(f"*/{CARD_FILE}"))]
    return sorted(cards, key=lambda c: c.name)


def find_stain_model(name_or_path: str | Path) -> ModelCard:
    """The card of a packaged model by name, or of a folder holding ``card.json``."""
    path = Path(name_or_path)
    if (path / CARD_FILE).is_file():
        card = read_card(path / CARD_FILE)
    else:
        found = [c for c in list_stain_models() if c.name == str(name_or_path)]
        if not found:
            known = ", ".join(c.name for c in list_stain_models()) or "none"
            raise StainInputError(f"no staining model named {str(name_or_path)!r}; known: {known} (or give a model folder)")
        card = found[0]
    if card.raw.get("kind") not in KINDS:
        raise StainInputError(f"model card {card.path} has kind {card.raw.get('kind')!r}; a staining model is one of {', '.join(KINDS)}")
    return card


def _network(card: ModelCard) -> Any:
    from importlib import import_module

    name, kwargs = card.architecture
    if name not in ARCHITECTURES:
        raise ResourceError(f"model card {card.path} names architecture {name!r}; staining cards may name {', '.join(ARCHITECTURES)}")
    module, attr = name.split(":")
    return getattr(import_module(module), attr)(**kwargs)


def load_weights(card: ModelCard) -> dict[str, Any]:
    """The card's state dict after checking the weights' sha256 (nothing is unpickled)."""
    import torch

    from medloop.app.io.hashing import sha256_file

    path = card.path.parent / card.weights_file
    if not path.is_file():
        raise ResourceError(f"weights {path} of staining model {card.name} are missing; reinstall medloop or retrain the recipe")
    if sha256_file(path) != card.weights_sha256:
        raise ResourceError(f"weights {path} of staining model {card.name} do not match the sha256 in its card (damaged or replaced); reinstall or retrain")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file
        raise ResourceError(f"weights {path} of staining model {card.name} cannot be loaded ({exc}); retrain the recipe") from None


@dataclass
class StainModel:
    """A loaded staining model: its card and networks (``G``/``F`` or ``despeckler``), eval mode."""

    card: ModelCard
    networks: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.card.raw["kind"])

    def translate(self, rgb: np.ndarray, direction: str = "A->B", name: str = "image") -> np.ndarray:
        """A stain-transfer model on one RGB image (floats in [0, 1] or uint8/uint16), whole image
        at once: float32 RGB in [0, 1]. For slides use the engine's tiling with ``generator()``."""
        from medloop.plugins.staining.checks import check_rgb
        from medloop.plugins.staining.cyclegan import translate

        rgb = check_rgb(rgb, name)
        if rgb.ndim != 3:
            raise StainInputError(f"{name} has shape {rgb.shape}; translate one 2-D RGB image at a time")
        return translate(rgb, self.generator(direction))

    def generator(self, direction: str = "A->B") -> Any:
        """G (A->B) or F (B->A) of a stain-transfer model."""
        if self.kind != "stain-transfer":
            raise StainInputError(f"model {self.card.name} is a {self.kind} model, not a stain-transfer model; choose another")
        if direction not in DIRECTIONS:
            raise StainInputError(f"direction {direction!r} is unknown; choose 'A->B' or 'B->A'")
        return self.networks["G" if direction == "A->B" else "F"]

    def provenance(self, started: float, device: Any = "cpu", **extra: Any) -> dict[str, Any]:
        """The shared provenance record of a run that began at ``started`` (``time.perf_counter()``)."""
        from medloop.models.provenance import model_provenance

        return model_provenance(self.card, device, started, kind=self.kind, **extra)

    def despeckle(self, rcm: np.ndarray, median: bool | None = None, name: str = "image") -> np.ndarray:
        """A despeckle model on one 2-D reflectance image in [0, 1]; ``median`` None: the card's choice."""
        from medloop.plugins.staining.despeckle import despeckle

        if self.kind != "despeckle":
            raise StainInputError(f"model {self.card.name} is a {self.kind} model, not a despeckle model; choose another")
        use = bool(self.card.inference.get("median", True)) if median is None else median
        return despeckle(rcm, self.networks["despeckler"], use, name)


def load_stain_model(name_or_path: str | Path) -> StainModel:
    """A packaged staining model by name (or a model folder), sha256-checked, in eval mode."""
    card = find_stain_model(name_or_path)
    state = load_weights(card)
    keys = ("G", "F") if card.raw["kind"] == "stain-transfer" else ("despeckler",)
    networks = {}
    for key in keys:
        network = _network(card)
        own = {k.split(".", 1)[1]: v for k, v in state.items() if k.split(".", 1)[0] == key}
        try:
            network.load_state_dict(own)
        except RuntimeError as exc:
            raise ResourceError(
                f"weights of staining model {card.name} do not fit its architecture ({str(exc).splitlines()[0]}); retrain the recipe") from None
        networks[key] = network.eval()
    return StainModel(card, networks)
