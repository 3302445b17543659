"""Panels fold advanced options away and scroll instead of growing past the screen (issue 14
§5): measured on the Correction, Segmentation and Review panels (widget tier, no viewer)."""

from __future__ import annotations

import pytest
from napari.components import ViewerModel


@pytest.fixture
def viewer():
    return ViewerModel()


def test_correction_shows_each_modes_options_only_in_that_mode(qtbot, viewer):
    from medloop.plugins.correction.widget import CorrectionPanel

    panel = CorrectionPanel(viewer)
    qtbot.addWidget(panel)
    panel.show()
    shown = lambda: {g.title() for g in (panel.stroke_options, panel.box_options, panel.point_options) if g.isVisible()}  # noqa: E731
    assert shown() == {"Stroke options"} and panel.balancing_combo.isVisible() and not panel.rounds_spin.isVisible()
    panel.set_kind("boxes")
    assert shown() == {"Box options"} and panel.rounds_spin.isVisible() and not panel.crf_check.isVisible()
    panel.set_kind("points")
    assert shown() == {"Point options"} and panel.crf_check.isVisible() and not panel.stage2_check.isVisible()


@pytest.mark.parametrize("which", ["correction", "segmentation", "review"])
def test_panels_scroll_instead_of_growing(qtbot, viewer, which):
    from qtpy.QtWidgets import QLabel, QScrollArea

    if which == "correction":
        from medloop.plugins.correction.widget import CorrectionPanel as Panel
    elif which == "segmentation":
        from medloop.plugins.segmentation.widget import SegmentationPanel as Panel
    else:
        from medloop.plugins.review.widget import ReviewPanel as Panel
    panel = Panel(viewer)
    qtbot.addWidget(panel)
    area = panel.scroll_area
    assert isinstance(area, QScrollArea) and area.widget().isAncestorOf(panel.status)
    content = area.widget().sizeHint().height()
    panel.resize(360, 240)  # a short, narrow dock: the content is taller, the panel does not grow
    panel.show()
    assert panel.minimumSizeHint().height() < 200 < content
    assert panel.height() == 240 and area.verticalScrollBar().maximum() > 0
    assert all(label.wordWrap() for label in area.widget().findChildren(QLabel))  # descriptions wrap
    assert area.horizontalScrollBar().maximum() == 0


def test_segmentation_folds_tiles_upscale_and_cascade(qtbot, viewer):
    from medloop.plugins.segmentation.widget import SegmentationPanel

    panel = SegmentationPanel(viewer)
    qtbot.addWidget(panel)
    panel.show()
    assert not panel.advanced.expanded and not panel.tile_spin.isVisible() and not panel.overlap_spin.isVisible()
    assert not panel.cascade_combo.isVisible() and not panel.train_button.isVisible()
    assert panel.run_button.isVisible() and panel.tile_spin.isEnabled() and panel.train_button.isEnabled()
    panel.advanced.button.click()
    assert panel.advanced.expanded and panel.tile_spin.isVisible() and panel.upscale_spins["z"].isVisible()
    panel.cascade_fold.button.click()
    assert panel.cascade_combo.isVisible() and panel.train_button.isVisible()
    panel.advanced.button.click()
    assert not panel.tile_spin.isVisible()


def test_boxes_and_points_explain_an_unsuitable_model(qtbot, tmp_path, monkeypatch):
    """No dead end: with only the 3-class brain model, boxes and points say why they cannot train
    and fine-tuning is off; a 2-D two-class model makes it available again."""
    from napari.components import ViewerModel

    from medloop.models import registry
    from medloop.plugins.correction.widget import CorrectionPanel
    from tests.models.tiny import make_tiny_model

    monkeypatch.setattr(registry, "user_models_dir", lambda: tmp_path / "zoo")
    shipped = registry.packaged_model_roots()
    # only the segmentation plugin's models (the lesion plugin ships a 2-class student: see the end)
    monkeypatch.setattr(registry, "packaged_model_roots", lambda: [r for r in shipped if "lesions" not in r.parts])
    panel = CorrectionPanel(ViewerModel())
    qtbot.addWidget(panel)
    panel.model_combo.setCurrentText("brain-tissue-t1")
    panel.set_kind("boxes")
    assert not panel.finetune_button.isEnabled()
    assert panel.status.text() == (
        "Boxes train a 2-D model with two classes (background / object); brain-tissue-t1 is 2-D with 3 classes. "
        "None is installed: register one with 'medloop models register WEIGHTS --card CARD'."
    )
    panel.set_kind("strokes")
    assert panel.finetune_button.isEnabled()
    weights, card = make_tiny_model(tmp_path / "src", spatial_dims=2, name="tiny-2d")
    registry.register_model(weights, card, tmp_path / "zoo")
    panel = CorrectionPanel(ViewerModel())
    qtbot.addWidget(panel)
    panel.model_combo.setCurrentText("brain-tissue-t1")
    panel.set_kind("points")
    assert panel.status.text().endswith("brain-tissue-t1 is 2-D with 3 classes. Pick tiny-2d.")
    panel.model_combo.setCurrentText("tiny-2d")
    assert panel.finetune_button.isEnabled()
    monkeypatch.setattr(registry, "packaged_model_roots", lambda: shipped)
    panel = CorrectionPanel(ViewerModel())
    qtbot.addWidget(panel)
    panel.model_combo.setCurrentText("brain-tissue-t1")
    panel.set_kind("boxes")
    assert panel.status.text().endswith("brain-tissue-t1 is 2-D with 3 classes. Pick lesion-student-brain, tiny-2d.")
