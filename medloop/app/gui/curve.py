"""A small live plot of training curves (loss and validation Dice per epoch; for stroke fine-tunes
that check the unpainted pixels also its two parts) for method panels.

Drawn with QPainter rather than matplotlib: it repaints in well under a millisecond for a few
hundred points and adds no dependency or second event loop to the panel. It has an epoch axis
(first and last epoch), a value axis (0 and 1: loss is drawn relative to its largest value, which
the legend gives), the latest value of each series, and says why there is no validation curve
when a run reports none.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRect, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

#: Series drawn by :meth:`CurvePlot.add_epoch`, with their colours.
SERIES = {
    "train loss": "#e69f00",
    "validation Dice": "#56b4e9",
    # Stroke fine-tunes that check the unpainted pixels: "validation Dice" is then the mean of these two.
    "held-out strokes": "#009e73",
    "agrees on unpainted": "#cc79a7",
}
#: Series shown (and in the legend) only once a run reports them.
OPTIONAL = ("held-out strokes", "agrees on unpainted")
KEYS = {"train loss": "train_loss", "validation Dice": "val_mean_dice", "held-out strokes": "val_stroke_dice", "agrees on unpainted": "unannotated_agreement"}
NO_VALIDATION = "no validation curve: nothing was held out (too few strokes or objects)"


class CurvePlot(QWidget):
    """Per-epoch training loss (scaled to its largest value) and validation Dice on one 0..1 axis."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.series: dict[str, list[tuple[float, float]]] = {name: [] for name in SERIES}
        self.epochs_seen = 0
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Training loss (relative to its largest value) and validation Dice per epoch")

    def clear(self) -> None:
        for points in self.series.values():
            points.clear()
        self.epochs_seen = 0
        self.update()

    def add_epoch(self, info: dict) -> None:
        """Take an epoch report of ``train_segmentation`` (``event == "epoch"``); others are ignored."""
        if info.get("event") != "epoch":
            return
        self.epochs_seen += 1
        epoch = float(info.get("epoch", len(self.series["train loss"])))
        for name, key in KEYS.items():
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

    def note(self) -> str:
        """What the plot says besides the curves: why there is no validation curve, or nothing."""
        if not self.epochs_seen:
            return "curves appear while fine-tuning"
        if not self.series["validation Dice"]:
            return NO_VALIDATION
        return ""

    def shown(self) -> list[str]:
        """The series drawn: the two base ones, and optional ones a run has reported."""
        return [name for name in SERIES if name not in OPTIONAL or self.series[name]]

    def legend(self) -> list[str]:
        """Legend entries with the latest value (loss: also its largest, the top of the axis)."""
        out = []
        for name in self.shown():
            points = self.series[name]
            if not points:
                out.append(name)
            elif name == "train loss":
                top = max(abs(v) for _, v in points)
                out.append(f"{name} {points[-1][1]:.3g} (axis 1 = {top:.3g})")
            else:
                out.append(f"{name} {points[-1][1]:.3f}")
        return out

    def _legend_places(self, fm, left: float) -> list[tuple[str, float, int]]:
        """``(text, x, row)`` of each legend entry, flowing onto further rows when too wide."""
        places, x, row = [], left, 0
        for text in self.legend():
            width = fm.horizontalAdvance(text)
            if x > left and x + width > self.width() - 6:
                x, row = left, row + 1
            places.append((text, x, row))
            x += width + 12
        return places

    def x_range(self) -> tuple[float, float]:
        xs = [x for points in self.series.values() for x, _ in points]
        return (min(xs), max(xs)) if xs else (0.0, 1.0)

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        fm = painter.fontMetrics()
        line = fm.height()
        note = self.note()
        flags = int(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop) | int(Qt.TextFlag.TextWordWrap)
        note_h = fm.boundingRect(QRect(0, 0, max(self.width() - 12, 40), 400), flags, note).height() if note and self.epochs_seen else 0
        left = fm.horizontalAdvance("1.0") + 8
        places = self._legend_places(fm, left)
        rows = 1 + max((row for _, _, row in places), default=0)
        box = QRectF(self.rect()).adjusted(left, rows * line + 4, -6, -(line + 4 + note_h))
        grey = QPen(QColor("#888888"))
        painter.setPen(grey)
        painter.drawRect(box)
        x0, x1 = self.x_range()
        span = (x1 - x0) or 1.0
        # value axis: 0 and 1 (loss relative to its largest value; Dice as is)
        for v in (0.0, 0.5, 1.0):
            y = box.bottom() - v * box.height()
            painter.drawText(QRectF(0, y - line / 2, box.left() - 3, line), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"{v:g}")
        # epoch axis: first and last epoch, and its title
        below = QRectF(box.left(), box.bottom() + 1, box.width(), line)
        if self.epochs_seen:
            painter.drawText(below, Qt.AlignmentFlag.AlignLeft, f"{x0:g}")
            painter.drawText(below, Qt.AlignmentFlag.AlignRight, f"{x1:g}")
        painter.drawText(below, Qt.AlignmentFlag.AlignHCenter, "epoch")
        for name, (text, x, row) in zip(self.shown(), places):
            painter.setPen(QPen(QColor(SERIES[name]), 2))
            painter.drawText(QPointF(x, (row + 1) * line), text)
            points = self.scaled(name)
            if not points:
                continue
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
        if note:
            painter.setPen(grey)
            if self.epochs_seen:  # below the epoch axis, in the room kept for it
                painter.drawText(QRectF(6, box.bottom() + line + 2, self.width() - 12, note_h), flags, note)
            else:
                painter.drawText(box, int(Qt.AlignmentFlag.AlignCenter) | int(Qt.TextFlag.TextWordWrap), note)
        painter.end()
