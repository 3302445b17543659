"""``medloop stain confocal | despeckle | transfer | normalize | train`` through the installed CLI
(the plugin as registered), on files the tests write: measured properties of every output, and
every bad input one line on stderr with exit code 2, before any compute."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "app" / "io"))
from slide_synth import write_synthetic_slide  # noqa: E402

from medloop.app.io.image import MedImage  # noqa: E402
from medloop.app.io.write import write_image  # noqa: E402
from tests.cli_helpers import refused  # noqa: E402

TILE = ("--tile", "64", "32", "16")  # small tiles keep the tests quick; still a kept-centre grid


@pytest.fixture(scope="module")
def files(tmp_path_factory, ihc):
    from medloop.plugins.staining.deconvolution import fcm_sim, rcm_sim

    d = tmp_path_factory.mktemp("stain")
    write_image(MedImage.from_array(ihc[:160, :192], spacing=(0.5, 0.5), unit="um", channel_axis=True), d / "ihc.tif")
    write_image(MedImage.from_array(ihc[300:460, 300:460], spacing=(0.5, 0.5), unit="um", channel_axis=True), d / "ref.tif")
    conf = np.stack([fcm_sim(ihc[:128, :128]), rcm_sim(ihc[:128, :128])]).astype(np.float32)
    tifffile.imwrite(d / "confocal.tif", conf)
    tifffile.imwrite(d / "three.tif", np.concatenate([conf, conf[:1]]))
    tifffile.imwrite(d / "rcm.tif", conf[1])
    slide = write_synthetic_slide(d / "slide.tif", size=(300, 340), tile=128, mpp=0.5, flavor="generic")
    return d, slide


def test_transfer_of_an_image_equals_the_in_memory_tiled_translation(cli, files, ihc):
    from medloop.app.io.read import read_image
    from medloop.plugins.staining.apply import transfer_generator, transfer_tiling, translate_rgb

    d, _ = files
    result = cli("stain", "transfer", str(d / "ihc.tif"), "-o", str(d / "t.tif"), "--model", "stain-transfer-ihc", *TILE)
    assert result.returncode == 0, result.stderr
    out = read_image(d / "t.tif")
    assert out.shape == (160, 192, 3) and out.dtype == np.uint8 and out.spacing == (0.5, 0.5)
    _, g = transfer_generator("stain-transfer-ihc", "A->B")
    expected = translate_rgb(ihc[:160, :192], g, transfer_tiling(g, (64, 32, 16)))
    np.testing.assert_array_equal(np.asarray(out.array), expected)
    assert np.abs(expected - ihc[:160, :192] * 255).mean() > 5  # it changed the stain


def test_transfer_of_a_slide_writes_a_pyramid_with_its_size_and_um_per_px(cli, files):
    import openslide

    from medloop.app.io.slide import read_slide
    from medloop.plugins.staining.apply import transfer_generator, transfer_tiling, translate_rgb

    d, slide = files
    out = d / "slide_b.tif"
    result = cli("stain", "transfer", str(slide.path), "-o", str(out), "--model", "stain-transfer-ihc",
                 "--direction", "b2a", "--level", "1", *TILE)
    assert result.returncode == 0, result.stderr
    src, got = read_slide(slide.path), read_slide(out)
    assert got.shape == tuple(src.pyramid[1].shape) == (150, 170, 3)
    assert got.spacing == pytest.approx((1.0, 1.0))  # level 1: twice level 0's 0.5 µm
    with openslide.OpenSlide(str(out)) as s:
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(1.0)
    _, f = transfer_generator("stain-transfer-ihc", "B->A")
    expected = translate_rgb(np.asarray(src.pyramid[1]), f, transfer_tiling(f, (64, 32, 16)))
    np.testing.assert_array_equal(np.asarray(got.array), expected)


def test_transfer_of_a_folder_runs_the_cohort(cli, files, tmp_path):
    d, _ = files
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(2):
        (folder / f"case{k}.tif").write_bytes((d / "ihc.tif").read_bytes())
    result = cli("stain", "transfer", str(folder), "-o", str(tmp_path / "out"), "--model", "stain-transfer-ihc", *TILE)
    assert result.returncode == 0, result.stderr
    assert "2 cases: 2 computed" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tif")) == ["case0.tif", "case1.tif"]


def test_confocal_renders_uint8_rgb_and_zero_signal_is_white(cli, files, tmp_path):
    d, _ = files
    out = tmp_path / "he.tif"
    result = cli("stain", "confocal", str(d / "confocal.tif"), "-o", str(out), "--despeckle")
    assert result.returncode == 0, result.stderr
    rgb = tifffile.imread(out)
    assert rgb.shape == (128, 128, 3) and rgb.dtype == np.uint8
    # F = R = 0 is white: put a dark corner in both modes and check it renders white
    conf = tifffile.imread(d / "confocal.tif")
    conf[:, :8, :8] = 0.0
    tifffile.imwrite(tmp_path / "dark.tif", conf)
    assert cli("stain", "confocal", str(tmp_path / "dark.tif"), "-o", str(out), "--fcm-channel", "1").returncode == 0
    assert (tifffile.imread(out)[:8, :8] == 255).all()


def test_despeckle_writes_a_float_image_in_unit_range(cli, files, tmp_path):
    d, _ = files
    out = tmp_path / "clean.tif"
    result = cli("stain", "despeckle", str(d / "rcm.tif"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    clean = tifffile.imread(out)
    noisy = tifffile.imread(d / "rcm.tif")
    assert clean.shape == noisy.shape and clean.dtype == np.float32 and 0 <= clean.min() and clean.max() <= 1
    assert np.abs(np.diff(clean, axis=1)).mean() < np.abs(np.diff(noisy, axis=1)).mean()  # smoother


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_normalize_moves_the_colours_towards_the_reference(cli, files, tmp_path, method):
    from medloop.plugins.staining.metrics import wasserstein_colour

    d, _ = files
    from medloop.plugins.staining.deconvolution import StainPerturbation, recolour

    src = tifffile.imread(d / "ihc.tif")
    shifted = (recolour(src, StainPerturbation(h_scale=1.6)) * 255).round().astype(np.uint8)  # ihc is in [0, 1]
    tifffile.imwrite(tmp_path / "shifted.tif", shifted)
    out = tmp_path / "n.tif"
    result = cli("stain", "normalize", str(tmp_path / "shifted.tif"), "-o", str(out), "--method", method,
                 "--reference", str(d / "ref.tif"))
    assert result.returncode == 0, result.stderr
    ref = tifffile.imread(d / "ref.tif")  # floats in [0, 1]
    got = tifffile.imread(out)
    assert got.shape == shifted.shape and got.dtype == np.uint8
    before, after = wasserstein_colour(shifted / 255.0, ref), wasserstein_colour(got / 255.0, ref)
    print(f"{method}: WD to the reference {before:.4g} -> {after:.4g}")
    assert after < before


def test_unpaired_training_writes_a_model_that_transfer_loads(cli, files, tmp_path):
    d, _ = files
    model = tmp_path / "model"
    result = cli("stain", "train", "--domain-a", str(d / "ihc.tif"), "--domain-b", str(d / "ref.tif"), "--out", str(model),
                 "--epochs", "1", "--steps-per-epoch", "1", "--patch", "32", "--batch", "2", timeout=300)
    assert result.returncode == 0, result.stderr
    assert (model / "card.json").is_file() and (model / "weights.pt").is_file()
    out = tmp_path / "t.tif"
    result = cli("stain", "transfer", str(d / "ihc.tif"), "-o", str(out), "--model", str(model), *TILE)
    assert result.returncode == 0, result.stderr
    assert tifffile.imread(out).shape == (160, 192, 3)


def test_bad_inputs_are_one_line_and_exit_2(cli, files, tmp_path):
    d, slide = files
    ihc, model = str(d / "ihc.tif"), ("--model", "stain-transfer-ihc")
    o = ("-o", str(tmp_path / "o.tif"))
    assert "no staining model named 'nope'" in refused(cli, "stain", "transfer", ihc, *o, "--model", "nope")
    assert "not a stain-transfer model" in refused(cli, "stain", "transfer", ihc, *o, "--model", "stain-despeckle-rcm")
    assert "larger than tile in" in refused(cli, "stain", "transfer", ihc, *o, *model, "--tile", "64", "128", "32")
    assert "is odd" in refused(cli, "stain", "transfer", ihc, *o, *model, "--tile", "65", "32", "16")
    assert "multiples of 4" in refused(cli, "stain", "transfer", ihc, *o, *model, "--tile", "66", "30", "14")
    assert "stride 64 is larger than keep 32" in refused(cli, "stain", "transfer", ihc, *o, *model, "--tile", "64", "32", "64")
    assert "levels 0 to 2" in refused(cli, "stain", "transfer", str(slide.path), *o, *model, "--level", "3")
    assert "name the output .tif" in refused(cli, "stain", "transfer", str(slide.path), "-o", str(tmp_path / "o.nii"), *model)
    assert "does not exist" in refused(cli, "stain", "transfer", ihc, "-o", str(tmp_path / "no" / "o.tif"), *model)
    assert "no such file" in refused(cli, "stain", "transfer", str(tmp_path / "missing.tif"), *o, *model)
    assert "expected 3 channels" in refused(cli, "stain", "transfer", str(d / "rcm.tif"), *o, *model)
    assert "expected 2 channels (FCM, RCM), got 3" in refused(cli, "stain", "confocal", str(d / "three.tif"), *o)
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.ones((2, 32, 32), np.float32) * 0.5)
    assert "is constant" in refused(cli, "stain", "confocal", str(flat), *o)
    assert "2-D reflectance" in refused(cli, "stain", "despeckle", str(d / "confocal.tif"), *o)
    white = tmp_path / "white.tif"
    tifffile.imwrite(white, np.full((64, 64, 3), 250, np.uint8))
    assert "constant colour channel" in refused(cli, "stain", "normalize", ihc, *o, "--reference", str(white))
    assert "--domain-b" in refused(cli, "stain", "train", "--domain-a", ihc, "--out", str(tmp_path / "m"))
    assert not (tmp_path / "o.tif").exists()

