"""A tiny registered model for tests: a 3-D U-Net that thresholds intensity, trained in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def tiny_card(
    name: str = "tiny-threshold", spatial_dims: int = 3, classes=None, spacing=None, in_channels: int = 1, norm="group"
) -> dict:
    axes = "bczyx" if spatial_dims == 3 else "bcyx"
    return {
        "name": name,
        "version": "1",
        "description": "Test model. Separates bright from dark voxels.",
        "authors": [{"name": "tests"}],
        "license": "BSD-3-Clause",
        "architecture": {"name": f"unet{spatial_dims}d", "kwargs": {"spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": 2, "features": [4, 8], "norm": norm}},
        "weights": {"source": "weights.pt", "sha256": "0" * 64},
        "inputs": [{"name": "image", "axes": axes, "channels": in_channels, "preprocessing": {"name": "none"}}],
        "outputs": [{"name": "probabilities", "axes": axes}],
        "inference": {"roi_size": [32] * spatial_dims, "overlap": 0.25},
        "medical": {"modality": "synthetic", "classes": classes or {"0": "background", "1": "bright"},
                    "expected_spacing_mm": spacing, "not_for_diagnosis": "tests only"},
    }


def make_tiny_model(
    folder: Path, spatial_dims: int = 3, seed: int = 0, name: str = "tiny-threshold", in_channels: int = 1, norm="group"
) -> tuple[Path, Path]:
    """Weights (deterministic init, a fixed bias makes intensity > 0.5 class 1) and a card file."""
    import json

    import torch

    from medloop.models.nets import build_network

    torch.manual_seed(seed)
    card = tiny_card(name, spatial_dims, in_channels=in_channels, norm=norm)
    net = build_network(card["architecture"]["name"], **card["architecture"]["kwargs"])
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "weights.pt"
    torch.save(net.state_dict(), weights)
    card_path = folder / "card.json"
    card_path.write_text(json.dumps(card))
    return weights, card_path


def random_volume(shape=(40, 48, 56), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


class Threshold(torch.nn.Module):
    """A 1x1-conv "network" whose logits are (0, 50 (x - 0.5)): class 1 exactly where the input is
    above 0.5 (2-D, or 3-D with ``dims=3``)."""

    divisible_by = 1

    def __init__(self, dims: int = 2) -> None:
        super().__init__()
        conv = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
        self.conv = conv(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1] = 50.0
            self.conv.bias.copy_(torch.tensor([0.0, -25.0]))

    def forward(self, x):
        return self.conv(x)
