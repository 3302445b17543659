"""What every weak-label trainer shares (strokes, boxes, points): the run record, the network's
input on the image's own grid, and whole-image prediction. Kept apart from :mod:`headless`,
which dispatches to the trainers, so that the trainers never import their dispatcher."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medloop.app.io.image import MedImage
from medloop.plugins.correction.weaklabels import AnnotationError


@dataclass
class WeakRun:
    """What :func:`run_weak` trained. ``labels``: the label map of the last training round
    (paint convention: 0 unlabeled / ignored, k + 1 class k; for boxes the final Cues-1
    pseudo-labels, 1 background, 2 foreground). ``rounds``: one dict per training round."""

    network: torch.nn.Module
    kind: str
    labels: np.ndarray
    annotation_counts: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)


def slice_by_slice(image: MedImage, card: Any) -> bool:
    """True for a volume and a 2-D model that segments volumes slice by slice (along axis 0)."""
    return image.ndim == 3 and card.spatial_dims == 2 and card.slice_axis is not None


def model_input(image: MedImage, card: Any) -> np.ndarray:
    """``(C, *spatial)`` float32 network input for ``image`` on its own grid, normalised as the
    model ``card`` says. Refuses images of the wrong dimensionality or channel count; a volume
    for a slice-by-slice 2-D model is accepted (strokes then train on its annotated slices)."""
    from medloop.models.inputs import check_input, network_input

    check_input(image, card)
    if image.ndim != card.spatial_dims and not slice_by_slice(image, card):
        raise AnnotationError(
            f"model {card.name} is {card.spatial_dims}-D but the image is {image.ndim}-D; "
            "retrain on a single slice or pick a model of the image's dimensionality"
        )
    return network_input(image, card)


def predict_labels(
    network: torch.nn.Module, x: np.ndarray, floor: Any = None, signal_gate: bool = True
) -> np.ndarray:
    """Class indices 0..K-1 (``x``'s spatial shape) of one whole-image forward pass.

    With ``signal_gate``, an image without signal (near-constant or noise only, judged by
    ``floor``, a :class:`~medloop.app.engine.signal.SignalFloor`; None: measured on ``x``
    itself) is background by construction, whatever the network says (issue #18 §3)."""
    from medloop.app.engine.signal import background_where_no_signal, signal_floor
    from medloop.app.engine.train import predict_whole

    was_training = network.training
    network.eval()
    try:
        with torch.inference_mode():
            labels, _ = predict_whole(network, x, int(getattr(network, "divisible_by", 1) or 1))
    finally:
        network.train(was_training)
    if not signal_gate:
        return labels
    return background_where_no_signal(labels, x, floor if floor is not None else signal_floor(x))


def predict_on_grid(network: torch.nn.Module, x: np.ndarray, signal_gate: bool = True) -> np.ndarray:
    """Class indices of ``x`` (``(C, *spatial)``) on its own grid; a volume given to a 2-D
    network is predicted slice by slice along axis 0. With ``signal_gate``, slices (or a whole
    image) without signal are background; the floor is measured once on the whole ``x``."""
    from medloop.app.engine.signal import signal_floor

    floor = signal_floor(x) if signal_gate else None
    if is_slice_input(network, x):
        return np.stack([predict_labels(network, x[:, z], floor, signal_gate) for z in range(x.shape[1])])
    return predict_labels(network, x, floor, signal_gate)


def num_classes(network: torch.nn.Module) -> int:
    from medloop.plugins.correction.retrain import output_conv

    return max(2, int(output_conv(network).out_channels))


def is_slice_input(network: torch.nn.Module, x: np.ndarray) -> bool:
    """A (C, Z, Y, X) input for a network of 2-D convolutions: trained slice by slice."""
    from medloop.plugins.correction.retrain import output_conv

    return x.ndim == 4 and isinstance(output_conv(network), torch.nn.Conv2d)
