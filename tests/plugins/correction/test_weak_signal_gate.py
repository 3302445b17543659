"""Whole-image passes of the weak-label trainers (``predict_on_grid``, ``predict_labels``) give
background where the input carries no signal (issue #18 §3)."""

from __future__ import annotations

import numpy as np
import torch

from medloop.models.nets.unet import unet2d
from medloop.plugins.correction.weak_kit import predict_labels, predict_on_grid


def test_signal_free_slices_and_images_are_background():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = unet2d(in_channels=1, out_channels=2, features=[8, 16], norm="group")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    disc = (np.hypot(yy - 16, xx - 16) < 10).astype(np.float32) + rng.normal(0, 0.01, (32, 32))
    ripple = 0.0015 / 224 * np.sin(np.arange(1024).reshape(32, 32))
    rician = np.hypot(rng.normal(0, 0.03, (32, 32)), rng.normal(0, 0.03, (32, 32)))
    x = np.stack([disc, disc.T, ripple, rician])[None].astype(np.float32)  # (1, Z, Y, X)
    raw = predict_on_grid(net, x, signal_gate=False)
    gated = predict_on_grid(net, x)
    assert int(raw[2].sum()) > 50 and int(raw[3].sum()) > 50  # the network invents foreground there
    assert int(gated[2:].sum()) == 0
    np.testing.assert_array_equal(gated[:2], raw[:2])
    assert net.training  # the passes leave the network's mode as it was
    flat = np.full((1, 32, 32), 0.3, np.float32) + ripple.astype(np.float32)  # a near-constant 2-D image
    assert int(predict_labels(net, flat, signal_gate=False).sum()) > 50 and int(predict_labels(net, flat).sum()) == 0
