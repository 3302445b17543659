"""The signal gate (issue #18 §3): a GroupNorm network invents tissue on near-empty and
noise-only slices; behind the gate they are background, and slices with structure are
predicted exactly as without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medloop.app.engine.signal import (
    background_where_no_signal,
    gated_predictor,
    signal_floor,
    signal_free,
)
from medloop.models.nets.unet import unet2d

H = W = 48


def structure(rng: np.random.Generator) -> np.ndarray:
    """A bright disc (1.0) holding a dimmer one (0.6) on a 0 background, with a little noise."""
    yy, xx = np.mgrid[:H, :W]
    r = np.hypot(yy - 24 + rng.integers(-4, 5), xx - 24 + rng.integers(-4, 5))
    img = np.where(r < 16, 1.0, 0.0) - 0.4 * (r < 7)
    return (img + rng.normal(0, 0.01, img.shape)).astype(np.float32)


def bad_slices(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A ripple of +-0.0015 on a 0-224 scale, Rician noise of 3 % of the tissue level (MR noise
    beyond the head), and exactly zero."""
    ripple = 0.0015 / 224 * np.sin(np.arange(H * W).reshape(H, W))
    rician = np.hypot(rng.normal(0, 0.03, (H, W)), rng.normal(0, 0.03, (H, W)))
    return {"ripple": ripple.astype(np.float32), "rician": rician.astype(np.float32), "zero": np.zeros((H, W), np.float32)}


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = unet2d(in_channels=1, out_channels=3, features=[8, 16], norm="group").eval()
    rng = np.random.default_rng(0)
    good = [structure(rng) for _ in range(6)]
    bad = bad_slices(rng)
    volume = np.stack([*good, *bad.values()])[None]  # (1, Z, H, W): the whole network input
    return net, volume, list(bad)


def logits(predictor, batch: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return predictor(torch.from_numpy(np.ascontiguousarray(batch)))


def test_floor_of_a_volume_with_background_has_both_rules(setup):
    _, volume, _ = setup
    floor = signal_floor(volume)
    assert 0.009 < floor.min_range < 0.011  # 1 % of a robust range of ~1
    assert floor.noise_ceiling is not None and 0.1 < floor.noise_ceiling < 0.45
    free = signal_free(torch.from_numpy(np.moveaxis(volume, 1, 0).copy()), floor).tolist()
    assert free == [False] * 6 + [True] * 3


def test_floor_without_dark_class_or_with_colour_has_no_noise_rule():
    rng = np.random.default_rng(1)
    assert signal_floor(rng.random((1, 20, 30, 30), dtype=np.float32)).noise_ceiling is None  # uniform: no dark class
    rgb = np.zeros((3, 40, 40), np.float32)
    rgb[:, 10:30, 10:30] = 1
    floor = signal_floor(rgb)
    assert floor.noise_ceiling is None and floor.min_range == pytest.approx(0.01)
    assert signal_floor(np.zeros((1, 8, 8), np.float32)).min_range == 1e-6  # constant: the floor of the floor


def test_groupnorm_invents_tissue_on_ripple_and_noise_the_gate_does_not(setup):
    net, volume, names = setup
    batch = np.moveaxis(volume, 1, 0)  # (Z, 1, H, W): one sample per slice
    raw = logits(net, batch).argmax(1)
    gated = logits(gated_predictor(net, signal_floor(volume)), batch).argmax(1)
    bad = {name: 6 + i for i, name in enumerate(names)}
    # Without the gate the per-slice normalisation stretches ripple and noise into "tissue":
    assert int((raw[bad["ripple"]] > 0).sum()) > 100, int((raw[bad["ripple"]] > 0).sum())
    assert int((raw[bad["rician"]] > 0).sum()) > 100, int((raw[bad["rician"]] > 0).sum())
    assert int((raw[bad["zero"]] > 0).sum()) == 0  # an exactly-zero slice is background even so
    for z in bad.values():
        assert int((gated[z] > 0).sum()) == 0


def test_slices_with_structure_keep_their_logits(setup):
    net, volume, _ = setup
    batch = np.moveaxis(volume, 1, 0)
    gate = gated_predictor(net, signal_floor(volume))
    good = batch[:6]
    assert torch.equal(logits(gate, good), logits(net, good))  # no gated sample: bit-identical
    mixed = logits(gate, batch)
    assert gate.skipped == 3 and gate.tiles == 6 + 9
    # Run on the 6 good slices only: the same numbers as inside the full batch (conv blocking
    # may differ in the last bits).
    torch.testing.assert_close(mixed[:6], logits(net, batch)[:6], rtol=0, atol=1e-5)


def test_gate_on_3d_slice_tiles_and_an_all_empty_batch(setup):
    """The slice-by-slice path hands (B, C, 1, h, w) tiles; a batch with no signal at all still
    gets K channels (learnt from one probe sample, or from the hint) without a full pass."""
    net, volume, _ = setup
    calls = []

    def slice_predictor(batch):
        calls.append(int(batch.shape[0]))
        b, _, _, h, w = batch.shape
        return net(batch[:, :, 0]).reshape(b, -1, 1, h, w)

    floor = signal_floor(volume)
    empty = torch.from_numpy(np.moveaxis(volume, 1, 0)[6:, :, None].copy())  # (3, 1, 1, H, W)
    out = logits(gated_predictor(slice_predictor, floor), empty)
    assert out.shape == (3, 3, 1, H, W) and calls == [1]  # one probe sample, once
    assert bool((out.argmax(1) == 0).all())
    calls.clear()
    out = logits(gated_predictor(slice_predictor, floor, num_classes_hint=3), empty)
    assert out.shape == (3, 3, 1, H, W) and calls == [] and out.dtype == torch.float32
    binary = logits(gated_predictor(lambda b: b[:, :1] * 0 + 5, floor, num_classes_hint=1), empty)
    assert binary.shape == (3, 1, 1, H, W) and bool((binary < 0).all())  # a binary logit says background


def test_background_where_no_signal_clears_only_signal_free_slices(setup):
    _, volume, _ = setup
    labels = np.ones(volume.shape[1:], np.int64)
    out = background_where_no_signal(labels, volume, signal_floor(volume), slice_axis=0)
    assert out[:6].min() == 1 and out[6:].max() == 0 and labels.min() == 1  # the input is not modified
    image = volume[:, 8]  # the zero slice as a whole 2-D image
    assert background_where_no_signal(np.ones((H, W), int), image, signal_floor(image)).max() == 0
    image = volume[:, 0]
    assert background_where_no_signal(np.ones((H, W), int), image, signal_floor(image)).min() == 1
