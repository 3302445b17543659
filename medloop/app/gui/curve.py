"""A small live plot of training curves (loss and validation Dice per epoch) for method panels.

Drawn with QPainter rather than matplotlib: it repaints in well under a millisecond for a few
hundred points and adds no dependency or second event loop to the panel.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

#: Series drawn by :meth:`CurvePlot.add_epoch`, with their colours.
SERIES = {"train loss": "#e69f00", "validation Dice": "#56b4e9"}


class CurvePlot(QWidget):
    """Per-epoch training loss (scaled to its largest value) and validation Dice on one 0..1 axis."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.series: dict[str, list[tuple[float, float]]] = {name: [] for name in SERIES}
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Training loss (relative to its largest value) and validation Dice per epoch")

    def clear(self) -> None:
        for points in self.series.values():
            points.clear()
        self.update()

    def add_epoch(self, info: dict) -> None:
        """Take an epoch report of ``train_segmentation`` (``event == "epoch"``); others are ignored."""
        if info.get("event") != "epoch":
            return
        epoch = float(info.get("epoch", len(self.series["train loss"])))
        for name, key in (("train loss", "train_loss"), ("validation Dice", "val_mean_dice")):
            value = info.get(key)
            if value is not None and math.isfinite(float(value)):
                self.series[name].append((epoch, float(value)))
        self.update()

    def scaled(self, name: str) -> list[tuple[float, float]]:
        """The points of ``name`` as drawn: loss divided by its largest value, Dice as is."""
        points = self.series[name]
        if name != "train loss" or not points:
            return list(points)
        top = max(abs(v) for _, v in points) or 1.0
        return [(x, v / top) for x, v in points]

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        box = QRectF(self.rect()).adjusted(4, 14, -4, -4)
        painter.setPen(QPen(QColor("#888888")))
        painter.drawRect(box)
        xs = [x for points in self.series.values() for x, _ in points]
        x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
        span = (x1 - x0) or 1.0
        legend_x = box.left()
        for name, colour in SERIES.items():
            painter.setPen(QPen(QColor(colour), 2))
            painter.drawText(QPointF(legend_x, 11), name)
            legend_x += painter.fontMetrics().horizontalAdvance(name) + 12
            points = self.scaled(name)
            poly = QPolygonF(
                [
                    QPointF(box.left() + (x - x0) / span * box.width(), box.bottom() - min(max(v, 0.0), 1.0) * box.height())
                    for x, v in points
                ]
            )
            if len(points) == 1:
                painter.drawEllipse(poly[0], 2, 2)
            else:
                painter.drawPolyline(poly)
        if not xs:
            painter.setPen(QPen(QColor("#888888")))
            painter.drawText(box, Qt.AlignmentFlag.AlignCenter, "curves appear while fine-tuning")
        painter.end()
