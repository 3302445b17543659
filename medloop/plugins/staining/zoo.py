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

from medloop.models.card import ModelCard
from medloop.models.plugin_zoo import (
    build_network, find_resource_model, list_resource_models, load_checked_weights, load_prefixed, resource_model_dirs,
)
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
    return resource_model_dirs(RESOURCE_KIND, PACKAGE)


def list_stain_models() -> list[ModelCard]:
    """The cards of the packaged staining models, sorted by name."""
    return list_resource_models(RESOURCE_KIND, PACKAGE)


def find_stain_model(name_or_path: str | Path) -> ModelCard:
    """The card of a packaged model by name, or of a folder holding ``card.json``."""
    card = find_resource_model(name_or_path, RESOURCE_KIND, PACKAGE, StainInputError, "staining model")
    if card.raw.get("kind") not in KINDS:
        raise StainInputError(f"model card {card.path} has kind {card.raw.get('kind')!r}; a staining model is one of {', '.join(KINDS)}")
    return card


def load_weights(card: ModelCard) -> dict[str, Any]:
    """The card's state dict after checking the weights' sha256 (nothing is unpickled)."""
    return load_checked_weights(card, "staining model")


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
    networks = {key: load_prefixed(build_network(card, ARCHITECTURES, "staining"), state, key, card, "staining model")
                for key in keys}
    return StainModel(card, networks)
