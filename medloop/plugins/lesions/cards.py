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

from medloop.models.card import CARD_FILE, write_card

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
    from medloop.models.plugin_recipes import plugin_card

    kind = recipe["kind"]
    card = plugin_card(recipe, trained, command, TASK_OF_KIND[kind], _io(kind, trained))
    if PREFIX_OF_KIND[kind] is not None:
        card["weights"]["prefix"] = trained.get("prefix", PREFIX_OF_KIND[kind])
    card["inference"].update(trained.get("inference", {}))
    if "threshold" in trained:
        card["inference"]["threshold"] = trained["threshold"]
    if kind == "segmenter":
        meta = recipe.get("card", {})
        card["medical"] = {"classes": SEGMENTER_CLASSES, "slice_axis": 0, "sequence": meta.get("sequence", ""), **card["medical"]}
    return write_card(card, Path(out) / CARD_FILE)
