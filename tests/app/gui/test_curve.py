"""The training curve (widget tier): axis values, epochs, latest values, and why there is no
validation curve when a run reports none."""

from __future__ import annotations

import numpy as np

from medloop.app.gui.curve import NO_VALIDATION, CurvePlot


def _near(widget, colour: str) -> int:
    """Pixels of the rendered widget within a small distance of ``colour``."""
    from qtpy.QtGui import QColor

    image = widget.grab().toImage()
    want = QColor(colour)
    rgb = np.array([[image.pixelColor(x, y).getRgb()[:3] for x in range(image.width())] for y in range(image.height())], float)
    return int((np.abs(rgb - [want.red(), want.green(), want.blue()]).sum(axis=-1) < 60).sum())


def test_curve_labels_values_and_missing_validation(qtbot):
    plot = CurvePlot()
    qtbot.addWidget(plot)
    plot.resize(360, 140)
    assert plot.note() == "curves appear while fine-tuning"
    for epoch, loss in ((1, 0.8), (2, 0.4), (3, 0.2)):
        plot.add_epoch({"event": "epoch", "epoch": epoch, "train_loss": loss, "val_mean_dice": None})
    assert plot.note() == NO_VALIDATION and plot.x_range() == (1.0, 3.0)
    assert plot.legend() == ["train loss 0.2 (axis 1 = 0.8)", "validation Dice"]
    assert _near(plot, "#e69f00") > 100  # the loss is drawn (a line, not only the legend)
    plot.clear()
    for epoch, dice in ((1, 0.5), (2, 0.75)):
        plot.add_epoch({"event": "epoch", "epoch": epoch, "train_loss": 1.0 / epoch, "val_mean_dice": dice})
    assert plot.note() == "" and plot.legend() == ["train loss 0.5 (axis 1 = 1)", "validation Dice 0.750"]
    assert _near(plot, "#56b4e9") > 100


def test_curve_shows_the_two_parts_of_a_stroke_selection_score(qtbot):
    """A stroke fine-tune that checks the unpainted pixels reports held-out stroke Dice and the
    agreement there; both are drawn and in the legend (which wraps onto a second row)."""
    plot = CurvePlot()
    qtbot.addWidget(plot)
    plot.resize(360, 170)
    for epoch, (strokes, agree) in enumerate(((0.9, 0.5), (0.95, 0.7)), start=1):
        plot.add_epoch({"event": "epoch", "epoch": epoch, "train_loss": 1.0 / epoch, "val_mean_dice": (strokes + agree) / 2,
                        "val_stroke_dice": strokes, "unannotated_agreement": agree})
    assert plot.legend() == ["train loss 0.5 (axis 1 = 1)", "validation Dice 0.825", "held-out strokes 0.950", "agrees on unpainted 0.700"]
    assert _near(plot, "#009e73") > 60 and _near(plot, "#cc79a7") > 60
    from qtpy.QtGui import QFontMetrics

    assert max(row for _, _, row in plot._legend_places(QFontMetrics(plot.font()), 30)) >= 1
