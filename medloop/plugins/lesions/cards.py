"""The model card of a trained lesion model: a valid medloop card whose ``task`` follows its kind.

* ``translator`` (healthy patch → lesion patch, UNIT): task ``synthesis``, 1-channel square patches
  in [0, 1] of the translator's size;
* ``classifier`` (the filter of Gupta et al.): task ``classification``, one lesion probability;
* ``anomaly`` (Baur et al.'s autoencoder): task ``image-to-image`` (the reconstruction), with the
  calibrated residual threshold ``t``, the median size and the modality it was trained on;
* ``segmenter`` (the student trained on pseudo-labels): task ``segmentation`` with the class table
  background / lesion, so the shared registry offers it to every segmentation panel.

Every card records the weights' sha256, the recipe and the command that reproduce it, and the
numbers measured on held-out phantoms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medloop.models.card import CARD_FILE, NOT_FOR_DIAGNOSIS, write_card

TASK_OF_KIND = {"translator": "synthesis", "classifier": "classification", "anomaly": "image-to-image",
                "segmenter": "segmentation"}
#: The prefix of each kind's network in its weights file (the trainers write these).
PREFIX_OF_KIND = {"translator": "translator", "classifier": "classifier", "anomaly": "autoencoder", "segmenter": None}
#: The segmenter's classes (a segmentation card's class table: the one every layer shows).
SEGMENTER_CLASSES = {"0": "background", "1": "lesion"}


def _io(kind: str, trained: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    image = {"axes": "bcyx", "channels": 1, "data_type": "float32", "range": [0, 1]}
    shape = trained.get("input_shape")
    if shape:
        image["shape"] = list(shape)
    if kind == "translator":
        return ([{"name": "healthy_patch", **image, "preprocessing": "crop scaled to [0, 1] by the image's range"}],
                [{"name": "lesion_patch", **image}])
    if kind == "segmenter":
        return ([{"name": "image", "axes": "bcyx", "channels": 1, "data_type": "float32", "preprocessing": {"name": "none"}}],
                [{"name": "probabilities", "axes": "bcyx", "postprocessing": ["softmax", "argmax"]}])
    if kind == "classifier":
        return ([{"name": "image", **image, "preprocessing": "image scaled to [0, 1] by its range, resized to shape"}],
                [{"name": "lesion_probability", "axes": "bc", "classes": ["lesion"], "range": [0, 1]}])
    return ([{"name": "image", **image, "preprocessing": "intensities in [0, 1] (brain-masked, skull-stripped)"}],
            [{"name": "reconstruction", **image}])


def write_lesion_card(recipe: dict[str, Any], trained: dict[str, Any], out: Path, command: str) -> Path:
    """Write ``out/card.json`` for a model trained from ``recipe`` (``trained``: the trainer's
    config, steps, files, metrics, architecture and seconds; ``threshold`` for an anomaly model)."""
    from medloop.app.io.hashing import sha256_file

    kind = recipe["kind"]
    meta = recipe.get("card", {})
    files = trained["files"]
    inputs, outputs = _io(kind, trained)
    card: dict[str, Any] = {
        "format_version": "medloop-card-1",
        "name": recipe["name"],
        "version": str(recipe.get("version", "1")),
        "task": TASK_OF_KIND[kind],
        "kind": kind,
        "description": recipe["description"],
        "authors": meta.get("authors", ["medloop developers"]),
        "license": meta.get("license", "BSD-3-Clause"),
        "architecture": trained["architecture"],
        "weights": {"format": "pytorch_state_dict", "source": files["weights"].name,
                    "sha256": sha256_file(files["weights"]),
                    **({} if PREFIX_OF_KIND[kind] is None else {"prefix": trained.get("prefix", PREFIX_OF_KIND[kind])})},
        "inputs": inputs,
        "outputs": outputs,
        "test_data": {"source": files["test_data"].name, "sha256": sha256_file(files["test_data"]), "tolerance": 1e-4},
        "inference": {**recipe.get("inference", {}), **trained.get("inference", {}),
                      **({"threshold": trained["threshold"]} if "threshold" in trained else {})},
        "medical": {
            **({"classes": SEGMENTER_CLASSES, "slice_axis": 0, "sequence": meta.get("sequence", "")} if kind == "segmenter" else {}),
            "modality": meta.get("modality", ""),
            "intended_use": meta.get("intended_use", ""),
            "limitations": meta.get("limitations", ""),
            "not_for_diagnosis": NOT_FOR_DIAGNOSIS,
        },
        "training": {"recipe": recipe, "command": command, "config": trained["config"],
                     "steps": trained["steps"], "seconds": trained["seconds"]},
        "metrics": trained["metrics"],
    }
    return write_card(card, Path(out) / CARD_FILE)
