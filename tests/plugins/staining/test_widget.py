"""Staining panels (viewer tier, under Xvfb): a slide opened through medloop's reader is
translated through the *Stain transfer* panel into a lazily opened pyramid with the input's size
and µm/pixel and the headless translation's pixels, without stalling the GUI thread; the
confocal and normalisation panels add their results on the input's grid; bad inputs show one
line in the status line and start nothing."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medloop.plugins.staining.apply import transfer_generator, transfer_tiling, translate_rgb
from medloop.plugins.staining.widget import ConfocalPanel, NormalisePanel, StainTransferPanel

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "app" / "io"))
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from bench_gui_stall import StallMeter  # noqa: E402
from slide_synth import write_synthetic_slide  # noqa: E402

pytestmark = pytest.mark.viewer
STALL_BOUND_S = 0.3
SMALL_TILE = (64, 32, 16)


def small_tiles(panel: StainTransferPanel) -> None:
    panel.tile_combo.addItem("test 64 / 32 / 16", SMALL_TILE)
    panel.tile_combo.setCurrentIndex(panel.tile_combo.count() - 1)


def settle(qtbot, panel, timeout: int = 120_000) -> None:
    qtbot.waitUntil(lambda: panel.job is None, timeout=timeout)


def one_line_refusal(panel, before: int) -> str:
    text = panel.status.text()
    assert text.startswith("Cannot run: ") and "\n" not in text, text
    assert panel.job is None and len(panel.viewer.layers) == before
    return text


def test_slide_transfer_opens_a_lazy_pyramid_equal_to_the_headless_translation(make_napari_viewer, qtbot, tmp_path):
    import dask.array as da

    slide = write_synthetic_slide(tmp_path / "slide.tif", size=(300, 340), tile=128, mpp=0.5, flavor="generic")
    viewer = make_napari_viewer(show=True)
    (source,) = viewer.open(str(slide.path), plugin="napari-medloop")
    assert source.multiscale
    panel = StainTransferPanel(viewer, out_dir=tmp_path / "out")
    viewer.window.add_dock_widget(panel, name="Stain transfer")
    small_tiles(panel)
    assert panel.image_combo.currentText() == source.name and panel.level_spin.maximum() == len(source.data) - 1
    qtbot.wait(1000)  # the window's first paint (slide tiles, the dock) is not the job's stall
    with StallMeter() as meter:
        t0 = time.perf_counter()
        panel.run()
        assert panel.job is not None
        settle(qtbot, panel)
        seconds = time.perf_counter() - t0
    print(f"slide transfer through the panel: worst GUI stall {meter.worst * 1000:.0f} ms, {seconds:.1f} s")
    assert meter.worst < STALL_BOUND_S, f"event loop blocked for {meter.worst * 1000:.0f} ms"
    layer = panel.result_layer
    assert layer is viewer.layers[f"{source.name}_stain-transfer-ihc"]
    # lazy: dask (a pyramid once the output is over 512 px a side), never one numpy array
    levels = list(layer.data) if layer.multiscale else [layer.data]
    assert all(isinstance(level, da.Array) for level in levels)
    assert levels[0].shape == source.data[0].shape == (300, 340, 3)
    np.testing.assert_allclose(layer.scale, source.scale)
    assert tuple(layer.units) == tuple(source.units)
    _, g = transfer_generator("stain-transfer-ihc", "A->B")
    expected = translate_rgb(np.asarray(source.data[0]), g, transfer_tiling(g, SMALL_TILE))
    np.testing.assert_array_equal(np.asarray(levels[0]), expected)
    panel.opacity.setValue(40)
    assert layer.opacity == pytest.approx(0.4)
    panel.before_after.setChecked(False)
    assert not layer.visible


def test_rgb_layer_transfer_keeps_the_grid_and_equals_the_headless_translation(make_napari_viewer, qtbot, ihc):
    viewer = make_napari_viewer()
    viewer.add_image(ihc[:96, :128], rgb=True, name="ihc", scale=(0.5, 0.5), translate=(3.0, 4.0))
    panel = StainTransferPanel(viewer)
    small_tiles(panel)
    panel.direction_combo.setCurrentIndex(1)  # B -> A
    panel.run()
    settle(qtbot, panel)
    layer = viewer.layers["ihc_stain-transfer-ihc"]
    assert tuple(layer.scale) == (0.5, 0.5) and tuple(layer.translate) == (3.0, 4.0) and layer.rgb
    _, f = transfer_generator("stain-transfer-ihc", "B->A")
    np.testing.assert_array_equal(layer.data, translate_rgb(ihc[:96, :128], f, transfer_tiling(f, SMALL_TILE)))


def test_bad_inputs_show_one_line_and_start_nothing(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    transfer, confocal, normalise = StainTransferPanel(viewer), ConfocalPanel(viewer), NormalisePanel(viewer)
    transfer.run()
    assert "open an RGB image" in one_line_refusal(transfer, 0)
    viewer.add_image(np.random.default_rng(0).random((3, 40, 40)).astype(np.float32), name="three")
    transfer.image_combo.setCurrentText("three")
    transfer.run()
    assert "expected an RGB image" in one_line_refusal(transfer, 1)
    confocal.image_combo.setCurrentText("three")
    confocal.run()
    assert "expected 2 channels (FCM, RCM), got 3" in one_line_refusal(confocal, 1)
    viewer.add_image(np.full((2, 40, 40), 0.5, np.float32), name="flat")
    confocal.image_combo.setCurrentText("flat")
    confocal.run()
    assert "is constant" in one_line_refusal(confocal, 2)
    viewer.add_image(np.full((40, 40, 3), 200, np.uint8), rgb=True, name="rgb")
    normalise.image_combo.setCurrentText("rgb")
    normalise.reference_combo.setCurrentText("rgb")
    normalise.run()
    assert "draw a reference rectangle" in one_line_refusal(normalise, 3)


def test_confocal_panel_renders_on_the_input_grid(make_napari_viewer, qtbot, ihc):
    from medloop.plugins.staining.confocal import ConfocalParams, confocal_to_rgb, to_uint8
    from medloop.plugins.staining.deconvolution import fcm_sim, rcm_sim

    conf = np.stack([fcm_sim(ihc[:64, :80]), rcm_sim(ihc[:64, :80])]).astype(np.float32)
    viewer = make_napari_viewer()
    viewer.add_image(conf, name="conf", scale=(1.0, 0.7, 0.7))
    panel = ConfocalPanel(viewer)
    panel.set_colour("h", (0.2, 0.1, 0.9))
    panel.run()
    settle(qtbot, panel)
    layer = viewer.layers["conf_gareau"]
    assert layer.rgb and layer.data.dtype == np.uint8 and layer.data.shape == (64, 80, 3)
    assert tuple(layer.scale) == (0.7, 0.7)
    params = ConfocalParams(h=(0.2, 0.1, 0.9), percentiles=(1.0, 99.0))
    np.testing.assert_array_equal(layer.data, to_uint8(confocal_to_rgb(conf, params)))


def test_normalise_panel_uses_the_drawn_rectangle(make_napari_viewer, qtbot, ihc):
    from medloop.plugins.staining.metrics import wasserstein_colour
    from medloop.plugins.staining.normalise import fit_normaliser

    viewer = make_napari_viewer()
    viewer.add_image(ihc[:128, :128], rgb=True, name="target")
    viewer.add_image(ihc[300:460, 300:460], rgb=True, name="reference")
    panel = NormalisePanel(viewer)
    panel.image_combo.setCurrentText("target")
    panel.reference_combo.setCurrentText("reference")
    panel.draw_reference()
    viewer.layers[panel.REFERENCE].add([[10, 20], [110, 140]], shape_type="rectangle")
    panel.method_combo.setCurrentText("reinhard")
    panel.run()
    settle(qtbot, panel)
    out = viewer.layers["target_reinhard"].data
    region = ihc[300:460, 300:460][10:110, 20:140]
    np.testing.assert_array_equal(out, fit_normaliser(region, "reinhard").apply(ihc[:128, :128]))
    assert wasserstein_colour(out / 255.0, region) < wasserstein_colour(ihc[:128, :128], region)  # ihc is in [0, 1]
