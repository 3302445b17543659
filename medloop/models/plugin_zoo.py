"""Packaged models that a plugin keeps apart from the segmentation registry (one of each).

The shared registry (:func:`medloop.models.registry.list_models`) offers every card under a
plugin's ``resources/models`` to the segmentation, correction and review panels. Models that are
not segmenters (stain translators, lesion translators and classifiers, anomaly autoencoders) live
in a resource folder of their own (``resources/<kind>/<name>/card.json`` + weights + test data),
and the plugin lists, finds and loads them through these helpers: cards are validated by
:func:`~medloop.models.card.read_card`, weights are sha256-checked and loaded with
``weights_only=True``, and a card may only name an architecture from the plugin's own table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medloop.app.errors import MedloopError, ResourceError
from medloop.models.card import CARD_FILE, ModelCard, read_card


def resource_model_dirs(kind: str, package: str) -> list[Path]:
    """Every folder ``<package>/resources/<kind>`` that exists."""
    from medloop.app.discovery import plugin_resource_dirs

    return plugin_resource_dirs(kind, plugins=(package,))


def list_resource_models(kind: str, package: str) -> list[ModelCard]:
    """The cards of the models packaged under ``<package>/resources/<kind>``, sorted by name."""
    cards = [read_card(p) for d in resource_model_dirs(kind, package) for p in sorted(d.glob(f"*/{CARD_FILE}"))]
    return sorted(cards, key=lambda c: c.name)


def find_resource_model(
    name_or_path: str | Path, kind: str, package: str, error: type[MedloopError], what: str,
) -> ModelCard:
    """The card of a packaged model by name, or of a folder holding ``card.json``; ``error`` (the
    plugin's input error) names the known models when none matches. ``what``: e.g. "staining model"."""
    path = Path(name_or_path)
    if (path / CARD_FILE).is_file():
        return read_card(path / CARD_FILE)
    known = list_resource_models(kind, package)
    found = [c for c in known if c.name == str(name_or_path)]
    if not found:
        names = ", ".join(c.name for c in known) or "none"
        raise error(f"no {what} named {str(name_or_path)!r}; known: {names} (or give a model folder)")
    return found[0]


def load_checked_weights(card: ModelCard, what: str) -> dict[str, Any]:
    """The card's state dict after checking the weights' sha256 (nothing is unpickled)."""
    import torch

    from medloop.app.io.hashing import sha256_file

    path = card.path.parent / card.weights_file
    if not path.is_file():
        raise ResourceError(f"weights {path} of {what} {card.name} are missing; reinstall medloop or retrain the recipe")
    if sha256_file(path) != card.weights_sha256:
        raise ResourceError(
            f"weights {path} of {what} {card.name} do not match the sha256 in its card (damaged or replaced); reinstall or retrain")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file
        raise ResourceError(f"weights {path} of {what} {card.name} cannot be loaded ({exc}); retrain the recipe") from None


def build_network(card: ModelCard, allowed: Sequence[str], what: str, **override: Any) -> Any:
    """The card's architecture (``module:Callable`` with kwargs), only from ``allowed``."""
    from importlib import import_module

    name, kwargs = card.architecture
    if name not in allowed:
        raise ResourceError(f"model card {card.path} names architecture {name!r}; {what} cards may name {', '.join(allowed)}")
    module, attr = name.split(":")
    return getattr(import_module(module), attr)(**{**kwargs, **override})


def load_prefixed(network: Any, state: dict[str, Any], prefix: str, card: ModelCard, what: str) -> Any:
    """``network`` with the entries of ``state`` under ``prefix.`` loaded, in eval mode."""
    own = {k.split(".", 1)[1]: v for k, v in state.items() if k.split(".", 1)[0] == prefix}
    try:
        network.load_state_dict(own)
    except RuntimeError as exc:
        raise ResourceError(
            f"weights of {what} {card.name} do not fit its architecture ({str(exc).splitlines()[0]}); retrain the recipe") from None
    return network.eval()
