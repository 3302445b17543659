"""Networks, built by name so model cards can store ``name`` + ``params``.

A name is a registered short name (:data:`ARCHITECTURES`) or an entry
``"<package>.<module>:<Callable>"`` naming a callable in medloop's own modules or in an installed
plugin package (a plugin's network lives in its own folder); other entries are refused before
anything is imported.

Importing this package is cheap: the submodules (and torch) load only when a network is built or
one of the classes is accessed.
"""

from __future__ import annotations

import importlib
from typing import Any

from medloop.app.errors import MedloopError

#: Architecture name -> ``"module:callable"`` that builds it from keyword parameters.
ARCHITECTURES: dict[str, str] = {
    "unet2d": "medloop.models.nets.unet:unet2d",
    "unet3d": "medloop.models.nets.unet:unet3d",
    "reduced_unet": "medloop.models.nets.reduced_unet:ReducedUNet",
    "factorised_unet": "medloop.models.nets.factorised_unet:FactorisedUNet",
}

_CLASSES = {
    "UNet": "medloop.models.nets.unet",
    "ReducedUNet": "medloop.models.nets.reduced_unet",
    "FactorisedUNet": "medloop.models.nets.factorised_unet",
}

__all__ = ["ARCHITECTURES", "build_network", *_CLASSES]


def constructor(name: str) -> Any:
    """The callable registered as ``name``, or named by a ``medloop.…:Callable`` entry;
    :class:`MedloopError` listing the known names if none (a
    :class:`~medloop.models.card.CardError` for an entry outside medloop)."""
    from medloop.models.card import CardError, architecture_refusal, is_own_architecture

    if name in ARCHITECTURES:
        module, attr = ARCHITECTURES[name].split(":")
    elif "." in name or ":" in name:
        if not is_own_architecture(name):
            raise CardError(architecture_refusal(name))
        module, attr = name.split(":")
    else:
        raise MedloopError(f"unknown network architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    try:
        built = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise MedloopError(f"cannot find network architecture {name!r} ({exc}); check the card's architecture") from None
    if not callable(built):
        raise MedloopError(f"network architecture {name!r} is not callable; name a class or a function")
    return built


def build_network(name: str, **params: Any):
    """A freshly initialised ``torch.nn.Module`` for architecture ``name`` built with ``params``.

    Unknown names and parameters the constructor refuses (wrong names or values, e.g. from a
    hand-edited model card) raise :class:`MedloopError` saying which.
    """
    build = constructor(name)
    try:
        return build(**params)
    except (TypeError, ValueError) as exc:
        raise MedloopError(f"cannot build network {name!r} with parameters {params}: {exc}") from exc


def __getattr__(attr: str) -> Any:
    # Lazy class access (``from medloop.models.nets import UNet``) without importing torch up front.
    if attr in _CLASSES:
        return getattr(importlib.import_module(_CLASSES[attr]), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
