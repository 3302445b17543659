"""What every result records about the model that made it: the one provenance builder."""

from __future__ import annotations

import time
from typing import Any


def model_provenance(card: Any, device: Any, started: float, **extra: Any) -> dict[str, Any]:
    """Provenance of a run of ``card``'s model on ``device`` that began at ``started``
    (``time.perf_counter()``): model name, version, weights sha256, device, seconds, classes,
    medloop's version, then ``extra`` (tile size, cascade, upscaling, ...)."""
    from medloop._version import __version__

    record = {
        "model": card.name,
        "model_version": card.version,
        "weights_sha256": card.weights_sha256,
        "device": str(device),
        **extra,
        "seconds": round(time.perf_counter() - started, 3),
        "classes": card.classes,
        "medloop_version": __version__,
    }
    return record


def model_reference(provenance: dict[str, Any] | None) -> dict[str, Any]:
    """The three fields that identify a model in a log or manifest (None where unknown)."""
    p = provenance or {}
    return {"model": p.get("model"), "model_version": p.get("model_version"), "weights_sha256": p.get("weights_sha256")}
