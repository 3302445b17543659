"""The model card of a trained staining model (a valid medloop card, task ``image-to-image``).

Besides the common fields it records the staining ``kind``, the two domains (what the model
takes and gives, channels and normalisation), the pixel size, the architecture, the weights'
sha256, the recipe and command that reproduce it, and the numbers measured on held-out data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medloop.models.card import CARD_FILE, write_card

DESPECKLER = "medloop.plugins.staining.despeckle:Despeckler"
GENERATORS = {"unet": "medloop.plugins.staining.cyclegan:ResUNetGenerator",
              "resnet": "medloop.plugins.staining.cyclegan:ResNetGenerator"}


def _architecture(recipe: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    if recipe["kind"] == "despeckle":
        return {"name": DESPECKLER, "kwargs": {"width": config["width"], "residual": config["residual"]}}
    gen = config["generator"]
    kwargs = ({"depth": gen["depth"], "width": gen["width"], "channels": 3, "up_kernel": gen["up_kernel"]}
              if gen["kind"] == "unet" else {"width": gen["width"], "blocks": gen["blocks"], "channels": 3})
    return {"name": GENERATORS[gen["kind"]], "kwargs": kwargs}


def _io(recipe: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The card's inputs/outputs: 1-channel reflectance in [0, 1], or RGB in [0, 1] (scaled to
    [-1, 1] inside)."""
    if recipe["kind"] == "despeckle":
        spec = {"axes": "bcyx", "channels": 1, "data_type": "float32", "range": [0, 1]}
        median = ["median_3x3"] if recipe.get("inference", {}).get("median", True) else []
        return ([{"name": "noisy_rcm", **spec, "preprocessing": {"name": "robust_percentile", "lower": 1, "upper": 99}}],
                [{"name": "despeckled_rcm", **spec, "postprocessing": ["clip_0_1", *median]}])
    spec = {"axes": "bcyx", "channels": 3, "data_type": "float32", "range": [0, 1]}
    return ([{"name": "rgb_domain_a", **spec, "preprocessing": {"name": "scale_linear", "from": [0, 1], "to": [-1, 1]}}],
            [{"name": "rgb_domain_b", **spec, "postprocessing": {"name": "scale_linear", "from": [-1, 1], "to": [0, 1]}}])


def write_stain_card(recipe: dict[str, Any], trained: dict[str, Any], out: Path, command: str) -> Path:
    """Write ``out/card.json`` for a model trained from ``recipe`` (``trained``: the trainer's
    config, steps, files, metrics and seconds)."""
    from medloop.models.plugin_recipes import plugin_card

    trained = {**trained, "architecture": _architecture(recipe, trained["config"])}
    card = plugin_card(recipe, trained, command, "image-to-image", _io(recipe))
    card["weights"]["networks"] = recipe.get("card", {}).get("networks", [])
    card["domains"] = recipe.get("domains", {})
    card["um_per_px"] = recipe.get("card", {}).get("um_per_px")
    return write_card(card, Path(out) / CARD_FILE)
