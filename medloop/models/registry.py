"""The model zoo: a name maps to an architecture, a weight file and a card.

Packaged models live in ``medloop/resources/models/<name>/`` and in every plugin's
``resources/models/<name>/`` (``card.json`` + weights; :func:`packaged_model_roots`); users
register their own into a models folder (default: the user data folder, or ``models_dir``).
Loading checks the weights' sha256 and never unpickles objects (``weights_only=True``).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from medloop.app.errors import MedloopError, ResourceError
from medloop.app.io.hashing import sha256_file
from medloop.models.card import CARD_FILE, ModelCard, read_card, write_card


class ModelNotFoundError(MedloopError):
    """No model of that name is registered."""


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: its folder and parsed card."""

    name: str
    folder: Path
    card: ModelCard
    packaged: bool

    @property
    def summary(self) -> str:
        return self.card.description.split(". ")[0]

    @property
    def weights_path(self) -> Path:
        return self.folder / self.card.weights_file


def packaged_models_dir() -> Path:
    """The shared packaged-models folder (models no single plugin owns)."""
    return Path(str(files("medloop") / "resources" / "models"))


def packaged_model_roots() -> list[Path]:
    """Every folder that holds packaged models: the shared one, then each plugin's own."""
    from medloop.app.discovery import plugin_resource_dirs as resource_dirs

    return [packaged_models_dir(), *resource_dirs("models")]


def user_models_dir() -> Path:
    """Where ``register_model`` puts models by default (per-user data folder)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("medloop")) / "models"


def list_models(models_dir: Path | None = None, packaged_roots: Sequence[Path] | None = None) -> list[ModelEntry]:
    """Packaged models (``packaged_roots``, default :func:`packaged_model_roots`), then those in
    ``models_dir`` (default: the user folder), sorted by name; the first of a name wins."""
    roots = [(Path(r), True) for r in (packaged_model_roots() if packaged_roots is None else packaged_roots)]
    entries: dict[str, ModelEntry] = {}
    for root, packaged in (*roots, (models_dir or user_models_dir(), False)):
        if not root.is_dir():
            continue
        for card_path in sorted(root.glob(f"*/{CARD_FILE}")):
            card = read_card(card_path)
            entries.setdefault(card.name, ModelEntry(card.name, card_path.parent, card, packaged))
    return sorted(entries.values(), key=lambda e: e.name)


def get_model(name: str, models_dir: Path | None = None, packaged_roots: Sequence[Path] | None = None) -> ModelEntry:
    """The entry called ``name``, or a folder holding a card.json given as a path."""
    path = Path(name)
    if (path / CARD_FILE).is_file():
        card = read_card(path / CARD_FILE)
        return ModelEntry(card.name, path, card, packaged=False)
    models = list_models(models_dir, packaged_roots)
    for entry in models:
        if entry.name == name:
            return entry
    known = ", ".join(e.name for e in models) or "none"
    raise ModelNotFoundError(
        f"no model named {name!r}; known models: {known} (see 'medloop models', or register one with "
        "'medloop models register')"
    )


sha256_of = sha256_file  # the registry's name for the one file hash


def load_state_dict(entry: ModelEntry) -> dict[str, Any]:
    """The checked weights of ``entry`` as a state dict (sha256 verified, no unpickling)."""
    import torch

    path = entry.weights_path
    if not path.is_file():
        raise ResourceError(f"weights {path} of model {entry.name} are missing; reinstall or re-register the model")
    if sha256_of(path) != entry.card.weights_sha256:
        raise ResourceError(
            f"weights {path} of model {entry.name} do not match the sha256 in its card (damaged or replaced); "
            "reinstall or re-register the model"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file
        raise ResourceError(f"weights {path} of model {entry.name} cannot be loaded ({exc}); re-register the model") from None
    return state["state_dict"] if isinstance(state, dict) and "state_dict" in state else state


def build_model(entry: ModelEntry, device: Any = "cpu"):
    """The network of ``entry`` with its weights, in eval mode on ``device``."""
    from medloop.models.nets import build_network

    arch, kwargs = entry.card.architecture
    network = build_network(arch, **kwargs)
    try:
        network.load_state_dict(load_state_dict(entry))
    except RuntimeError as exc:
        raise ResourceError(
            f"weights of model {entry.name} do not fit architecture {arch} ({str(exc).splitlines()[0]}); "
            "check the card's architecture"
        ) from None
    return network.to(device).eval()


def _checked_state(weights: Path, parsed: ModelCard) -> None:
    """Load ``weights`` as a plain state dict (nothing unpickled) and into the card's architecture,
    before anything is copied: a file that would fail at first use is refused now, in one line."""
    import torch

    from medloop.models.nets import build_network

    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickled object, a foreign or damaged file: torch's message is long
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResourceError(
            f"cannot register {weights}: it is not a plain tensor state dict ({first}); "
            "save the weights with torch.save(model.state_dict(), path)") from None
    state = state["state_dict"] if isinstance(state, dict) and "state_dict" in state else state
    arch, kwargs = parsed.architecture
    try:
        build_network(arch, **kwargs).load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ResourceError(
            f"cannot register {weights}: the weights do not fit the card's architecture {arch} "
            f"({str(exc).strip().splitlines()[0]}); check the card or the weights") from None


def register_model(weights: Path, card: Path, models_dir: Path | None = None) -> ModelEntry:
    """Check ``weights`` against ``card`` (plain state dict, fits the architecture), then copy both
    into the models folder, recording the weights' sha256. The card's test data is copied (with its
    sha256) when it lies beside the card, and dropped from the card otherwise: a registered card
    names only files its folder has."""
    parsed = read_card(card)
    weights = Path(weights)
    if not weights.is_file():
        raise ResourceError(f"cannot register {weights}: no such file; check the path")
    _checked_state(weights, parsed)
    target = (models_dir or user_models_dir()) / parsed.name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, target / weights.name)
    raw = dict(parsed.raw)
    raw["weights"] = {**raw["weights"], "source": weights.name, "sha256": sha256_of(target / weights.name)}
    test_data = Path(card).parent / str(raw.get("test_data", {}).get("source", ""))
    if raw.get("test_data") and test_data.is_file():
        if test_data.resolve() != (target / test_data.name).resolve():
            shutil.copyfile(test_data, target / test_data.name)
        raw["test_data"] = {**raw["test_data"], "source": test_data.name, "sha256": sha256_of(target / test_data.name)}
    else:
        raw.pop("test_data", None)
    write_card(raw, target / CARD_FILE)
    return ModelEntry(parsed.name, target, read_card(target / CARD_FILE), packaged=False)
