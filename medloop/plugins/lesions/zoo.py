"""Packaged lesion models: a bone-lesion translator (UNIT), its filter classifier, and a brain
anomaly autoencoder with its calibrated threshold.

They live in the plugin's ``resources/lesion_models/<name>/`` (card, weights, test data), apart
from the segmentation registry (see :mod:`medloop.models.plugin_zoo`). A card's ``kind`` says what
the model is (``translator``, ``classifier``, ``anomaly``); its architecture must be one of
:data:`ARCHITECTURES`; weights are sha256-checked and loaded with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medloop.models.card import ModelCard
from medloop.models.plugin_zoo import (
    build_network, find_resource_model, list_resource_models, load_checked_weights, load_prefixed,
)
from medloop.plugins.lesions.checks import LesionInputError

PACKAGE = "medloop.plugins.lesions"
RESOURCE_KIND = "lesion_models"
KINDS = ("translator", "classifier", "anomaly")
#: The callables a lesion card may name (nothing else is ever imported from a card).
ARCHITECTURES = (
    "medloop.plugins.lesions.unit:build_translator_modules",
    "medloop.plugins.lesions.classifier:LesionClassifier",
    "medloop.plugins.lesions.anomaly:SpatialAutoencoder",
)
WHAT = "lesion model"
#: How messages name each kind.
NAMED = {"translator": "a translator", "classifier": "a classifier", "anomaly": "an anomaly model"}


def list_lesion_models(kind: str | None = None) -> list[ModelCard]:
    """The packaged lesion models' cards (of one ``kind`` if given), sorted by name."""
    return [c for c in list_resource_models(RESOURCE_KIND, PACKAGE) if kind is None or c.raw.get("kind") == kind]


def find_lesion_model(name_or_path: str | Path, kind: str | None = None) -> ModelCard:
    """A packaged model's card by name, or a model folder's; ``kind`` must match when given."""
    card = find_resource_model(name_or_path, RESOURCE_KIND, PACKAGE, LesionInputError, WHAT)
    found = card.raw.get("kind")
    if found not in KINDS:
        raise LesionInputError(f"model card {card.path} has kind {found!r}; a lesion model is one of {', '.join(KINDS)}")
    if kind is not None and found != kind:
        raise LesionInputError(f"model {card.name} is {NAMED[found]}, not {NAMED[kind]}; choose {NAMED[kind]}")
    return card


@dataclass
class LesionModel:
    """A loaded lesion model: its card and network (eval mode, CPU)."""

    card: ModelCard
    network: Any

    @property
    def kind(self) -> str:
        return str(self.card.raw["kind"])

    @property
    def sha256(self) -> str:
        return str(self.card.weights_sha256)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.card.raw["inputs"][0].get("shape", ()))

    def translator(self) -> Any:
        """The model as a :class:`~medloop.plugins.lesions.translators.Translator`."""
        from medloop.plugins.lesions.unit import UnitTranslator

        self._need("translator")
        translator = UnitTranslator(self.network, int(self.input_shape[-1]))
        translator.name, translator.sha256 = self.card.name, self.sha256
        # Crops are placed around a box the way the translator's training lesions were.
        translator.placement = str(self.card.raw["inference"].get("placement", "random"))
        return translator

    def scorer(self) -> Any:
        """The model as a filter :class:`~medloop.plugins.lesions.synthesize.Scorer`."""
        from medloop.plugins.lesions.classifier import ClassifierScorer

        self._need("classifier")
        return ClassifierScorer(self.network, tuple(self.input_shape[-2:]), name=self.card.name)

    @property
    def median(self) -> int:
        """The anomaly model's median size (5: 5 x 5 per slice, 5 x 5 x 5 over a stack)."""
        return int(self.card.raw["inference"].get("median", 5))

    @property
    def threshold(self) -> float:
        """The anomaly model's calibrated residual threshold t."""
        self._need("anomaly")
        return float(self.card.raw["inference"]["threshold"])

    def anomaly_map(self, image: np.ndarray, brain_mask: np.ndarray | None = None, name: str = "image",
                    per_slice: bool = False) -> np.ndarray:
        """The residual map r = median(max(x − x̂, 0)) of a 2-D image or a slice stack: the card's
        median over the volume (5 x 5 x 5), or within each slice when ``per_slice`` (a stack of
        unrelated slices) or when the stack holds one slice."""
        from medloop.plugins.lesions.residual import anomaly_map

        self._need("anomaly")
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[0] == 1:  # a 2-D image stored as one slice: the 2-D median
            mask = None if brain_mask is None else np.asarray(brain_mask)[0]
            return anomaly_map(self.network, image[0], mask, median=self.median, name=name)[None]
        median = (self.median, self.median) if per_slice and image.ndim == 3 else self.median
        return anomaly_map(self.network, image, brain_mask, median=median, name=name)

    def _need(self, kind: str) -> None:
        if self.kind != kind:
            raise LesionInputError(f"model {self.card.name} is {NAMED[self.kind]}, not {NAMED[kind]}; choose {NAMED[kind]}")


def load_lesion_model(name_or_path: str | Path, kind: str | None = None) -> LesionModel:
    """A packaged lesion model by name (or a model folder), sha256-checked, in eval mode."""
    card = find_lesion_model(name_or_path, kind)
    state = load_checked_weights(card, WHAT)
    network = build_network(card, ARCHITECTURES, "lesion")
    prefix = card.raw["weights"].get("prefix") or ""
    if not prefix:  # a ModuleDict of named networks: the keys are its own
        state, prefix = {f"model.{k}": v for k, v in state.items()}, "model"
    return LesionModel(card, load_prefixed(network, state, prefix, card, WHAT))
