"""Whole-slide image-to-image translation (staining spec §2.4): a level read lazily, translated
block by block with de Bel's tiling, written tile by tile as an RGB pyramid that OpenSlide and
medloop open back at the same size and µm/pixel."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from medloop import read_image
from medloop.app.engine import JobCancelled
from medloop.app.engine.tiling import (
    TilingParams,
    TranslationParams,
    default_denormalise,
    default_normalise,
    tiled_inference,
    translate_level,
)
from medloop.app.io.napari_reader import read_layers
from medloop.app.io.slide import pyramid_shapes, read_slide
from tests.app.engine.stain_nets import tiny_unet
from tests.app.io.slide_synth import write_synthetic_slide

openslide = pytest.importorskip("openslide")
torch.set_num_threads(1)

TILING = TilingParams(128, keep=64, stride=32, batch_size=4, divisible_by=4)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("slide") / "in.tif"
    write_synthetic_slide(path, size=(300, 520), tile=256, mpp=0.5, flavor="generic")
    return read_slide(path)


def translator(seed: int = 0):
    """An instance-norm U-Net mapped to [0, 1]: every tile's output depends on all of the tile."""
    net = tiny_unet(seed)
    return lambda x: (net(x) + 1) / 2


def test_slide_translation_equals_the_in_memory_result(slide, tmp_path):
    level, spacing = slide.pyramid[0], slide.spacing
    out = tmp_path / "stained.tif"
    calls = []
    f = translator()
    params = TranslationParams(TILING, block_size=256, tile=256)
    assert translate_level(level, f, out, spacing, params, progress=lambda d, t: calls.append((d, t))) == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stained.tif"]
    assert calls[-1][0] == calls[-1][1] and [d for d, _ in calls] == sorted(d for d, _ in calls)
    # the whole level at once, through the same tiler
    expected = default_denormalise(tiled_inference(default_normalise(np.asarray(level)), f, TILING))
    back = openslide.OpenSlide(str(out))
    assert back.dimensions == (520, 300) and back.level_count == len(pyramid_shapes((300, 520))) == 2
    assert float(back.properties["openslide.mpp-x"]) == pytest.approx(spacing[0])
    assert float(back.properties["openslide.mpp-y"]) == pytest.approx(spacing[1])
    got = np.asarray(back.read_region((0, 0), 0, back.dimensions))[..., :3]
    np.testing.assert_array_equal(got, expected)
    # medloop opens it as a lazy slide with the input's geometry ...
    image = read_image(out)
    assert image.array.shape == level.shape and image.spacing == pytest.approx(spacing)
    assert image.unit == slide.unit and len(image.pyramid) == 2
    np.testing.assert_array_equal(np.asarray(image.pyramid[1][:100, :100]), _halved(expected)[:100, :100])
    # ... and so does its napari reader: a multiscale RGB layer at the input layer's scale
    (data, kwargs, kind), = read_layers(str(out))
    (data_in, kwargs_in, _), = read_layers(str(slide.path))
    assert kind == "image" and kwargs["rgb"] and kwargs["multiscale"]
    assert data[0].shape == data_in[0].shape and tuple(kwargs["scale"]) == pytest.approx(tuple(kwargs_in["scale"]))


def _halved(rgb: np.ndarray) -> np.ndarray:
    s = rgb.astype(np.uint32)
    return ((s[0::2, 0::2] + s[1::2, 0::2] + s[0::2, 1::2] + s[1::2, 1::2] + 2) // 4).astype(np.uint8)


def test_cancel_stops_within_one_batch_and_leaves_nothing(slide, tmp_path):
    f, calls = translator(), []

    def counted(x):
        calls.append(len(x))
        return f(x)

    with pytest.raises(JobCancelled):
        translate_level(slide.pyramid[0], counted, tmp_path / "out.tif", slide.spacing,
                        TranslationParams(TILING, block_size=256), should_stop=lambda: len(calls) >= 3)
    assert len(calls) == 3  # the batch running when the flag rose was the last
    assert list(tmp_path.iterdir()) == []


def pointwise(x: torch.Tensor) -> torch.Tensor:
    return 1 - x  # a negative: cheap, so the test measures the machinery


def test_memory_stays_below_the_decoded_level(tmp_path):
    """Peak traced memory is a few blocks and one band (about 27 MB here, as for half this
    height): less than the level decoded once as uint8, a quarter of it as float input."""
    path = tmp_path / "big.tif"
    write_synthetic_slide(path, size=(4096, 3072), tile=256, mpp=0.25, flavor="generic")
    level = read_slide(path).pyramid[0]
    params = TranslationParams(TilingParams(256, keep=128, stride=64, batch_size=4), block_size=512)
    tracemalloc.start()
    try:
        translate_level(level, pointwise, tmp_path / "out.tif", (0.25, 0.25), params)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    decoded = 4096 * 3072 * 3  # 36 MiB as uint8, 144 MiB as the float input of the network
    assert peak < decoded
    back = openslide.OpenSlide(str(tmp_path / "out.tif"))
    region = np.asarray(back.read_region((1500, 3700), 0, (300, 200)))[..., :3]
    np.testing.assert_array_equal(region, 255 - np.asarray(level[3700:3900, 1500:1800]))


def test_bad_settings_are_named(slide, tmp_path):
    level = slide.pyramid[0]
    with pytest.raises(ValueError, match="needs a kept-centre tiling"):
        translate_level(level, pointwise, tmp_path / "o.tif", slide.spacing, TranslationParams(TilingParams(128)))
    with pytest.raises(ValueError, match=r"level must be \(height, width, 3\) RGB, got shape \(300, 520\)"):
        translate_level(level[..., 0], pointwise, tmp_path / "o.tif", slide.spacing)
    with pytest.raises(ValueError, match="input tile .* must be a multiple of 8"):
        translate_level(level, pointwise, tmp_path / "o.tif", slide.spacing,
                        TranslationParams(TilingParams(100, keep=64, stride=32, divisible_by=8)))
    grey = TranslationParams(TILING, denormalise=lambda y: default_denormalise(y)[..., 0])
    with pytest.raises(ValueError, match=r"denormalise must map .* to \(h, w, 3\) uint8"):
        translate_level(level, pointwise, tmp_path / "o.tif", slide.spacing, grey)
    assert list(Path(tmp_path).iterdir()) == []
