"""The learned engine: a DeepGrow/RITM-style 2-D click U-Net (spec §4.4, phase 2).

The ROI crop is resampled to the net's canonical 64 x 64 grid (a square field of view over the
crop's longer physical side, so shapes keep their aspect), the clicks become DeepGrow guidance
channels and the previous mask a fourth channel (:func:`~.clicksim.net_input`); the medloop
``UNet`` (GroupNorm, widths 8-16-32-64, one logit) predicts the object, whose probability is
resampled back onto the ROI and thresholded at 0.5. Locked voxels are cleared.

A 3-D request is answered on one slice only: the axial slice (axis 0) of the last click; the
returned mask is empty elsewhere (the 3-D pass is phase 3). The packaged net ships disabled
(:func:`learned_status`): it becomes the default only when it beats the classical engine on the
held-out objects (spec §7.4); its card carries the numbers it was judged on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medloop.app.errors import ResourceError
from medloop.plugins.interactive.clicksim import Click, net_input
from medloop.plugins.interactive.engine_api import EngineInput

GRID = 64
MODEL_NAME = "click-any-2d"
ARCHITECTURE = {"name": "unet2d", "kwargs": {"in_channels": 4, "out_channels": 1, "features": [8, 16, 32, 64], "norm": "group"}}


def packaged_card() -> Path:
    """The card of the packaged 2-D click net."""
    return Path(__file__).parent / "resources" / "click_models" / MODEL_NAME / "card.json"


def build_click_net(kwargs: dict[str, Any] | None = None):
    """A freshly initialised 2-D click U-Net (``ARCHITECTURE`` unless ``kwargs`` are given)."""
    from medloop.models.nets import build_network

    return build_network(ARCHITECTURE["name"], **dict(kwargs or ARCHITECTURE["kwargs"]))


def learned_status(card_path: str | Path | None = None) -> tuple[bool, str]:
    """(enabled, reason) from the card's ``interactive`` section; (False, why) without a card."""
    path = Path(card_path) if card_path is not None else packaged_card()
    try:
        section = json.loads(path.read_text(encoding="utf-8"))["interactive"]
        return bool(section["enabled"]), str(section["reason"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"no usable click-net card at {path} ({type(exc).__name__}); train one with medloop train --recipe {MODEL_NAME}"


def load_click_net(card_path: str | Path | None = None):
    """The click net of a card (sha256 checked, ``weights_only``), in eval mode on the CPU."""
    import torch

    from medloop.app.io.hashing import sha256_file
    from medloop.models.card import read_card

    card = read_card(Path(card_path) if card_path is not None else packaged_card())
    weights = Path(card.path).parent / card.weights_file
    if not weights.is_file():
        raise ResourceError(f"click-net weights {weights} are missing; reinstall medloop or retrain with medloop train --recipe {MODEL_NAME}")
    if sha256_file(weights) != card.weights_sha256:
        raise ResourceError(f"click-net weights {weights} do not match the sha256 in {card.path}; reinstall or retrain them")
    net = build_click_net(card.architecture[1])
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.eval()


def _grid_coords(shape: tuple[int, ...], spacing: tuple[float, ...], grid: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Where the canonical grid's pixels fall in the crop (float indices, (2, grid, grid)), the
    crop's centre and the grid step in mm: a square field over the longer physical side."""
    centre = (np.asarray(shape, float) - 1) / 2
    step = float(max(n * s for n, s in zip(shape, spacing))) / grid
    k = (np.arange(grid, dtype=float) - (grid - 1) / 2) * step
    coords = np.stack(np.meshgrid(centre[0] + k / spacing[0], centre[1] + k / spacing[1], indexing="ij"))
    return coords, centre, step


def to_grid(index: tuple[float, ...], centre: np.ndarray, spacing: tuple[float, ...], step: float, grid: int = GRID) -> tuple[float, ...]:
    """A crop index (array order) on the canonical grid."""
    return tuple(float((i - c) * s / step + (grid - 1) / 2) for i, c, s in zip(index, centre, spacing))


def segment_slice(net: Any, image: np.ndarray, spacing: tuple[float, ...], clicks: list[Click], previous: np.ndarray) -> np.ndarray:
    """The net's mask (bool, ``image``'s shape) of one 2-D crop; ``clicks`` in crop indices."""
    import torch
    from scipy import ndimage

    coords, centre, step = _grid_coords(image.shape, spacing, GRID)
    img = ndimage.map_coordinates(image.astype(np.float32), coords, order=1, mode="nearest")
    prev = ndimage.map_coordinates(previous.astype(np.float32), coords, order=1, mode="constant", cval=0.0) > 0.5
    grid_clicks = [Click(to_grid(c.index, centre, spacing, step), c.positive) for c in clicks]
    x = torch.from_numpy(net_input(img, grid_clicks, prev)[None])
    with torch.inference_mode():
        prob = torch.sigmoid(net(x))[0, 0].numpy()
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in image.shape], indexing="ij"))
    back = np.stack([to_grid_axis(idx[a], centre[a], spacing[a], step) for a in range(2)])
    return ndimage.map_coordinates(prob, back, order=1, mode="nearest") > 0.5


def to_grid_axis(index: np.ndarray, centre: float, spacing: float, step: float, grid: int = GRID) -> np.ndarray:
    """Crop indices along one axis on the canonical grid (vectorised :func:`to_grid`)."""
    return (index - centre) * spacing / step + (grid - 1) / 2


class LearnedEngine:
    """The click U-Net behind the :class:`~.engine_api.Engine` protocol. The network is built
    and its weights checked once per instance, on the first request (or :meth:`warm_up`)."""

    name = "learned"
    budget_voxels = 64**3

    def __init__(self, card_path: str | Path | None = None) -> None:
        self.card_path = Path(card_path) if card_path is not None else packaged_card()
        self._net: Any = None

    def warm_up(self) -> None:
        """Build the network and load its weights now (the session's worker calls this)."""
        if self._net is None:
            self._net = load_click_net(self.card_path)
            segment_slice(self._net, np.zeros((GRID, GRID), np.float32), (1.0, 1.0), [], np.zeros((GRID, GRID), bool))

    def segment(self, request: EngineInput, should_stop: Callable[[], bool] | None = None) -> np.ndarray:
        """The object's mask in the ROI; a 3-D request is answered on the last click's slice."""
        previous = np.asarray(request.previous, bool)
        if not request.points or (should_stop is not None and should_stop()):
            return previous.copy()
        self.warm_up()
        image = np.asarray(request.image, np.float32)
        if image.ndim == 2:
            clicks = [Click(tuple(float(i) for i in p.index), p.positive) for p in request.points]
            mask = segment_slice(self._net, image, tuple(request.spacing), clicks, previous)
        else:
            k = int(request.points[-1].index[0])
            clicks = [Click(tuple(float(i) for i in p.index[1:]), p.positive) for p in request.points if int(p.index[0]) == k]
            mask = np.zeros(image.shape, bool)
            mask[k] = segment_slice(self._net, image[k], tuple(request.spacing[1:]), clicks, previous[k])
        if should_stop is not None and should_stop():
            return previous.copy()
        mask &= ~np.asarray(request.locked, bool)
        return mask
