"""De Bel's kept-centre tiling in the one tiler (staining spec §2.4 and §6 check 7): tiles of
128 with the central 64 kept, stride 32, pyramid weights, reflect padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medloop.app.engine.metrics import seam_ratio
from medloop.app.engine.tiling import (
    TilingParams,
    importance_map,
    kept_centre_grid,
    reflect_index,
    tiled_inference,
    tiling_grid,
)
from tests.app.engine.stain_nets import tiny_unet

torch.set_num_threads(1)

IN, KEEP, STRIDE = 128, 64, 32
ODD = (217, 189)


def conv_net(channels: int = 3, out_channels: int = 3, seed: int = 0) -> torch.nn.Module:
    """Width-8, normalisation-free, zero-padded convolutions (receptive radius 3 < margin 32)."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d
    return torch.nn.Sequential(
        conv(channels, 8, 3, padding=1), torch.nn.Tanh(), conv(8, 8, 3, padding=1), torch.nn.Tanh(),
        conv(8, out_channels, 3, padding=1),
    ).eval()


def rgb(shape=ODD, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (3, *shape)).astype(np.float32)


def spec_pads(n: int) -> tuple[int, int]:
    """The spec's padding, written from its words: margin + (kept - stride) in front, as much
    plus up to a multiple of the stride behind."""
    before = (IN - KEEP) // 2 + KEEP - STRIDE
    return before, before + (-n) % STRIDE


def untiled(net: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """One pass over the reflect-padded canvas, cropped back."""
    pads = [spec_pads(n) for n in image.shape[1:]]
    canvas = np.pad(image, [(0, 0), *pads], mode="reflect")
    with torch.no_grad():
        out = net(torch.from_numpy(canvas)[None])[0].numpy()
    return out[:, pads[0][0] : pads[0][0] + image.shape[1], pads[1][0] : pads[1][0] + image.shape[2]]


def kept(blend: str = "pyramid", **kw) -> TilingParams:
    return TilingParams(IN, keep=KEEP, stride=None if blend == "none" else STRIDE, blend=blend, batch_size=8, **kw)


# --------------------------------------------------------------------------------------------
# (a) equal to one untiled pass; (b) identity


@pytest.mark.parametrize("net", [conv_net(), tiny_unet(1, norm=False, depth=1)], ids=["conv", "unet-no-norm"])
def test_tiled_equals_untiled_pass_over_the_reflect_padded_canvas(net):
    image = rgb()
    calls = []
    params = kept(divisible_by=getattr(net, "divisible_by", 1))
    out = tiled_inference(image, lambda x: (calls.append(len(x)), net(x))[1], params)
    assert sum(calls) < 100  # tile passes: 8 x 7 = 56
    assert out.shape == image.shape and out.dtype == np.float32
    assert np.abs(out - untiled(net, image)).max() <= 1e-4


@pytest.mark.parametrize("shape", [ODD, (1, 1), (5, 300), (64, 64)])
def test_identity_reproduces_the_input(shape):
    image = rgb(shape, seed=2)
    pyramid = tiled_inference(image, lambda x: x, kept())
    assert np.abs(pyramid - image).max() <= 1e-6  # a weighted mean in float32
    for blend in ("flat", "none"):  # equal weights: the mean of equal values is exact
        np.testing.assert_array_equal(tiled_inference(image, lambda x: x, kept(blend)), image)


def test_output_channels_and_range_follow_the_predictor():
    image = rgb((70, 90))
    to5 = torch.nn.Conv2d(3, 5, 1)
    out = tiled_inference(image, lambda x: torch.tanh(to5(x)), kept())
    assert out.shape == (5, 70, 90) and out.dtype == np.float32
    assert -1 <= out.min() and out.max() <= 1
    grey = tiled_inference(image[:1], lambda x: x.repeat(1, 3, 1, 1), kept(out_dtype=np.float64))
    assert grey.dtype == np.float64 and np.abs(grey - image[:1]).max() <= 1e-6


def test_a_predictor_may_return_only_the_kept_centre():
    image = rgb((100, 80))
    full = tiled_inference(image, lambda x: x * 2, kept())
    centre = tiled_inference(image, lambda x: x[..., 32:96, 32:96] * 2, kept())
    np.testing.assert_array_equal(full, centre)


# --------------------------------------------------------------------------------------------
# (c) weights and coverage


def coverage(grid, weights: np.ndarray | None = None) -> np.ndarray:
    """Kept-centre count (or summed weight) over the image."""
    total = np.zeros(grid.canvas)
    for y, x in grid.tiles():
        total[y : y + grid.kept[0], x : x + grid.kept[1]] += 1 if weights is None else weights
    (oy, ox), (h, w) = grid.image_origin, grid.shape
    return total[oy : oy + h, ox : ox + w]


@pytest.mark.parametrize("shape", [ODD, (1, 1), (33, 400)])
def test_every_pixel_is_in_four_kept_centres_with_positive_weight(shape):
    grid = kept_centre_grid(shape, IN, KEEP, STRIDE)
    for n, (before, after) in zip(shape, (spec_pads(n) for n in shape)):
        assert before == 64 and (before + n + after - IN) % STRIDE == 0
    assert grid.pad_before == (64, 64)
    assert (coverage(grid) == 4).all()
    for blend in ("pyramid", "flat", "literal"):
        assert coverage(grid, importance_map(grid.kept, blend).numpy()).min() > 0
    assert (coverage(kept_centre_grid(shape, IN, KEEP, KEEP)) == 1).all()


def test_pyramid_falls_off_from_the_centre_and_literal_eq2_is_its_opposite():
    pyramid = importance_map((KEEP, KEEP), "pyramid").numpy()
    literal = importance_map((KEEP, KEEP), "literal").numpy()
    h = KEEP / 2
    y, x = np.meshgrid(np.arange(KEEP) - (KEEP - 1) / 2, np.arange(KEEP) - (KEEP - 1) / 2, indexing="ij")
    np.testing.assert_allclose(pyramid, np.minimum(h - abs(x), h - abs(y)) + 1e-3, rtol=1e-6)
    np.testing.assert_allclose(literal, np.minimum(abs(x), abs(y)) + 1e-3, rtol=1e-6)
    assert pyramid[31, 31] == pyramid.max() and pyramid[0, 0] == pyramid.min() > 0
    assert literal[0, 0] == literal.max() and literal[31, 5] == literal.min()
    assert (importance_map((KEEP, KEEP), "flat").numpy() == 1).all()


def test_reflect_index_is_numpys_reflect_however_wide_the_padding():
    for n in (1, 2, 3, 7):
        np.testing.assert_array_equal(
            reflect_index(np.arange(-40, n + 45), n), np.pad(np.arange(n), (40, 45), mode="reflect")
        )


def test_reflect_padding_in_the_monai_grid_too():
    from scipy import ndimage

    image = rgb((10, 7))[:1]
    mean3 = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    mean3.weight.data.fill_(1 / 9)
    got = tiled_inference(image, mean3, TilingParams(16, pad_mode="reflect"))[0]
    want = ndimage.uniform_filter(image[0], 3, mode="mirror")  # scipy's "mirror" is numpy's reflect
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_scheme_defaults_and_bad_settings():
    p = TilingParams(IN, keep=KEEP)
    assert (p.blend, p.pad_mode) == ("pyramid", "reflect")
    assert tiling_grid(ODD, p).starts[0][1] == 32  # stride: half the kept centre
    assert (TilingParams(IN).blend, TilingParams(IN).pad_mode) == ("gaussian", "constant")
    assert tiling_grid(ODD, TilingParams(IN, keep=KEEP, blend="none")).starts[0][1] == 64
    bad = [
        (dict(keep=130), "kept centre 130 must be between 1 and the input tile 128"),
        (dict(keep=63), "must be even"),
        (dict(keep=64, stride=65), "stride 65 must be between 1 and the kept centre 64"),
        (dict(keep=64, stride=32, blend="none"), "blend 'none' needs non-overlapping tiles"),
        (dict(keep=64, stride=20, divisible_by=8), r"stride \(20, 20\) must be a multiple of 8"),
    ]
    for kw, message in bad:
        with pytest.raises(ValueError, match=message):
            tiled_inference(rgb((40, 40)), lambda x: x, TilingParams(IN, **kw))
    with pytest.raises(ValueError, match="blend 'none' needs a kept centre"):
        tiled_inference(rgb((40, 40)), lambda x: x, TilingParams(IN, blend="none"))
    with pytest.raises(ValueError, match="unknown blend 'cosine'"):
        tiled_inference(rgb((40, 40)), lambda x: x, TilingParams(IN, keep=KEEP, blend="cosine"))


# --------------------------------------------------------------------------------------------
# (d) seams with an instance-norm net


def test_pyramid_hides_the_seams_naive_tiling_shows():
    from skimage import data

    image = (data.immunohistochemistry()[:224, :224].transpose(2, 0, 1) / 255).astype(np.float32)
    net = tiny_unet(0)  # instance norm: every tile has its own statistics
    ratios, passes = {}, []
    counted = lambda x: (passes.append(len(x)), net(x))[1]  # noqa: E731
    for name, params in [("pyramid", kept(divisible_by=4)), ("naive", TilingParams(64, keep=64, blend="none"))]:
        grid = tiling_grid(image.shape[1:], params)
        out = tiled_inference(image, counted, params)
        assert out.shape == image.shape and out.dtype == np.float32
        ratios[name] = seam_ratio(out, grid.seams(1))
    assert sum(passes) < 100  # 64 + 16
    assert ratios["pyramid"] <= 1.05  # measured 0.96
    assert ratios["pyramid"] < ratios["naive"]  # measured 1.23
