"""*Train stain transfer*: a CycleGAN trained on two unpaired sources (an RGB layer or a folder of
images each) in a worker, with progress, Cancel (nothing written), a live per-epoch loss curve and
every run saved as a new version ``<user models dir>/stain-models/<name>/v<N>/`` that the *Stain
transfer* panel lists. Compute lives in :mod:`.apply` and :mod:`.user_models`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import (
    QComboBox, QDoubleSpinBox, QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QSizePolicy, QSpinBox, QVBoxLayout,
    QWidget,
)

from medloop.app.errors import MedloopError
from medloop.plugins.staining.widget import _StainPanel

if TYPE_CHECKING:
    import napari

FOLDER = "(folder of images)"


class LossCurve(QWidget):
    """The losses per epoch on a log axis: generator (adversarial + cycle + identity), cycle L1
    and discriminator (mean of D_A and D_B)."""

    SERIES = {"generator": "#e69f00", "cycle": "#56b4e9", "discriminator": "#009e73"}

    def __init__(self) -> None:
        super().__init__()
        self.points: dict[str, list[tuple[float, float]]] = {k: [] for k in self.SERIES}
        self.setMinimumHeight(180)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def clear(self) -> None:
        for p in self.points.values():
            p.clear()
        self.update()

    def add(self, info: dict) -> None:
        """Take the loop's ``event="epoch"`` record (epoch means ``train_<key>``; step records are ignored)."""
        if info.get("event") != "epoch":
            return
        d_a, d_b = info.get("train_loss_D_A"), info.get("train_loss_D_B")
        values = {"generator": info.get("train_loss_G"), "cycle": info.get("train_cycle"),
                  "discriminator": None if d_a is None or d_b is None else 0.5 * (d_a + d_b)}
        for key, value in values.items():
            if value is not None and np.isfinite(value) and value > 0:
                self.points[key].append((float(info.get("epoch", 0)), float(value)))
        self.update()

    def decades(self) -> tuple[int, int]:
        values = [v for p in self.points.values() for _, v in p]
        if not values:
            return -1, 1
        lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
        return lo, max(hi, lo + 1)

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        fm = painter.fontMetrics()
        line = fm.height()
        lo, hi = self.decades()
        box = QRectF(fm.horizontalAdvance("1e-10") + 8, 2 * line + 6, 0, 0)
        box.setRight(self.width() - 8)
        box.setBottom(self.height() - line - 4)
        grey = QPen(QColor("#888888"))
        painter.setPen(grey)
        painter.drawRect(box)
        for d in range(lo, hi + 1):
            y = box.bottom() - (d - lo) / (hi - lo) * box.height()
            painter.drawText(QRectF(0, y - line / 2, box.left() - 3, line), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"{10.0 ** d:g}")
        xs = [x for p in self.points.values() for x, _ in p] or [1.0, 2.0]
        x0, x1 = min(xs), max(max(xs), min(xs) + 1)
        below = QRectF(box.left(), box.bottom() + 1, box.width(), line)
        if any(self.points.values()):
            painter.drawText(below, Qt.AlignmentFlag.AlignLeft, f"{x0:g}")
            painter.drawText(below, Qt.AlignmentFlag.AlignRight, f"{x1:g}")
        painter.drawText(below, Qt.AlignmentFlag.AlignHCenter, "epoch (loss, log scale)")
        for row, (name, colour) in enumerate(self.SERIES.items()):
            pts = self.points[name]
            text = f"{name} {pts[-1][1]:.3g}" if pts else name
            painter.setPen(QPen(QColor(colour), 2))
            painter.drawText(QPointF(box.left() + (row % 2) * box.width() / 2, (row // 2 + 1) * line), text)
            poly = [QPointF(box.left() + (px - x0) / (x1 - x0) * box.width(),
                            box.bottom() - (math.log10(v) - lo) / (hi - lo) * box.height()) for px, v in pts]
            for p in poly:
                painter.drawEllipse(p, 2, 2)
            if len(poly) > 1:
                painter.drawPolyline(QPolygonF(poly))
        if not any(self.points.values()):
            painter.setPen(grey)
            painter.drawText(box, int(Qt.AlignmentFlag.AlignCenter) | int(Qt.TextFlag.TextWordWrap), "losses appear after each epoch")
        painter.end()


class _Source:
    """One domain: an RGB layer or a folder of images, and its name."""

    def __init__(self, panel: "TrainStainPanel", default: str) -> None:
        self.panel = panel
        self.combo = QComboBox()
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("folder of RGB images")
        self.browse = QPushButton("Browse …")
        self.browse.clicked.connect(self.choose_folder)
        self.name = QLineEdit(default)
        self.row = QHBoxLayout()
        self.row.addWidget(self.folder, 1)
        self.row.addWidget(self.browse)
        self.combo.currentTextChanged.connect(self._toggle)

    def refresh(self) -> None:
        current = self.combo.currentText()
        names = [layer.name for layer in self.panel.viewer.layers if layer._type_string == "image"] + [FOLDER]
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItems(names)
        if current in names:
            self.combo.setCurrentText(current)
        self.combo.blockSignals(False)
        self._toggle()

    def _toggle(self, *_: Any) -> None:
        on = self.combo.currentText() == FOLDER
        self.folder.setEnabled(on)
        self.browse.setEnabled(on)

    def choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self.panel, "Folder of RGB images")
        if path:
            self.folder.setText(path)

    def items(self, key: str) -> tuple[list[Any], str]:
        """The domain's images (an RGB array or image files) and what they are, checked cheaply."""
        from medloop.plugins.staining.apply import domain_files

        choice = self.combo.currentText()
        if choice == FOLDER:
            files = domain_files(self.folder.text().strip() or ".", key)
            return list(files), f"folder {self.folder.text().strip()}"
        if not choice or choice not in self.panel.viewer.layers:
            raise MedloopError(f"domain {key}: open an RGB image or choose a folder of images")
        layer = self.panel.viewer.layers[choice]
        if layer.multiscale:
            raise MedloopError(f"domain {key}: layer {choice} is a whole slide; export tissue regions as images to train on")
        data = np.asarray(layer.data)
        if data.ndim != 3 or data.shape[-1] not in (3, 4):
            raise MedloopError(f"domain {key}: layer {choice} has shape {data.shape}; expected an RGB image (3 channels last)")
        return [data[..., :3]], f"layer {choice}"


class TrainStainPanel(_StainPanel):
    """Train an unpaired stain-transfer CycleGAN; each run is a new version of a user model."""

    run_text = "Train"

    def __init__(self, napari_viewer: "napari.Viewer", models_root: str | None = None) -> None:
        from medloop.plugins.staining.cyclegan import CycleGANConfig

        self.sources = {}
        super().__init__(napari_viewer)
        import medloop.plugins.staining.cards  # noqa: F401 - imported here, not in the worker (an import
        import medloop.plugins.staining.recipes  # noqa: F401 - holds the interpreter lock: a GUI stall)
        import medloop.plugins.staining.sampling  # noqa: F401
        self.models_root = models_root
        self.sources = {"A": _Source(self, "A"), "B": _Source(self, "B")}
        preset = CycleGANConfig()
        self.patch_spin = self._spin(16, 1024, preset.patch, 8)
        self.batch_spin = self._spin(1, 64, preset.batch)
        self.epochs_spin = self._spin(1, 1000, preset.epochs)
        self.steps_spin = self._spin(1, 10000, preset.steps_per_epoch)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(5)
        self.lr_spin.setRange(1e-5, 1.0)
        self.lr_spin.setSingleStep(0.001)
        self.lr_spin.setValue(preset.lr)
        self.seed_spin = self._spin(0, 2**31 - 1, preset.seed)
        self.name_edit = QLineEdit("my-stain-model")
        for key, src in self.sources.items():
            self.form.addRow(f"Domain {key} source", src.combo)
            self.form.addRow("", src.row)
            self.form.addRow(f"Domain {key} name", src.name)
        for label, widget in (("Patch (px)", self.patch_spin), ("Batch", self.batch_spin), ("Epochs", self.epochs_spin),
                              ("Steps per epoch", self.steps_spin), ("Learning rate", self.lr_spin),
                              ("Seed", self.seed_spin), ("Model name", self.name_edit)):
            self.form.addRow(label, widget)
        self._finish_layout("Train a stain-transfer CycleGAN on two unpaired sets of RGB images (a layer or a folder "
                            "each). Every run is saved as a new version the Stain transfer panel lists.")
        self.name_edit.editingFinished.connect(self._fill_versions)
        self._fill_versions()

    @staticmethod
    def _spin(lo: int, hi: int, value: int, step: int = 1) -> QSpinBox:
        spin = QSpinBox()
        spin.setRange(lo, hi)
        spin.setSingleStep(step)
        spin.setValue(value)
        return spin

    def _add_extra(self, layout: QVBoxLayout) -> None:
        self.curve = LossCurve()
        layout.addWidget(self.curve)
        self.version_combo = QComboBox()
        self.use_button = QPushButton("Use this version")
        self.use_button.clicked.connect(self.use_version)
        row = QHBoxLayout()
        row.addWidget(self.version_combo, 1)
        row.addWidget(self.use_button)
        layout.addLayout(row)

    def refresh_layers(self, *_: Any) -> None:
        super().refresh_layers()
        for src in getattr(self, "sources", {}).values():
            src.refresh()

    def versions(self):
        from medloop.plugins.staining.user_models import StainVersions

        return StainVersions(self.name_edit.text(), self.models_root)

    def _fill_versions(self) -> None:
        self.version_combo.clear()
        try:
            versions = self.versions()
            found, current = versions.list(), versions.current
        except MedloopError:
            found, current = [], 0
        for v in found:
            self.version_combo.addItem(f"v{v}" + (" (in use)" if v == current else ""), v)
        self.version_combo.setCurrentIndex(max(0, self.version_combo.findData(current)))
        self.use_button.setEnabled(bool(found))

    def config(self):
        from medloop.plugins.staining.cyclegan import CycleGANConfig

        return CycleGANConfig(patch=self.patch_spin.value(), batch=self.batch_spin.value(), epochs=self.epochs_spin.value(),
                              steps_per_epoch=self.steps_spin.value(), lr=self.lr_spin.value(), seed=self.seed_spin.value())

    def prepare(self):
        from medloop.plugins.staining.apply import train_unpaired

        a_choice, b_choice = self.sources["A"].combo.currentText(), self.sources["B"].combo.currentText()
        same = self.sources["A"].folder.text().strip() == self.sources["B"].folder.text().strip() if a_choice == FOLDER else True
        if a_choice == b_choice and same:
            raise MedloopError(f"domains A and B are the same {'folder' if a_choice == FOLDER else 'layer'}; "
                               "choose two differently stained sources")
        (a, a_what), (b, b_what) = self.sources["A"].items("A"), self.sources["B"].items("B")
        names = (self.sources["A"].name.text().strip() or "A", self.sources["B"].name.text().strip() or "B")
        versions, config = self.versions(), self.config()
        if config.patch % config.generator.multiple:
            raise MedloopError(f"patch {config.patch} px must be a multiple of {config.generator.multiple}")

        def compute(progress, should_stop):
            def fit(folder, version):
                train_unpaired(a, b, folder, config, versions.name, progress, should_stop, names, str(version))

            return versions.train(fit)

        def done(version: int) -> None:
            self.last_result = versions.path(version)
            self._fill_versions()
            label = f"{versions.name} v{version}"
            self._refresh_transfer_panels(label)
            self.status.setText(f"Saved {label} ({names[0]} {a_what} ↔ {names[1]} {b_what}) to {versions.path(version)}; "
                                "the Stain transfer panel lists it.")

        self.curve.clear()
        return compute, done

    def run(self) -> None:
        if self.job is not None:
            return
        try:
            compute, done = self.prepare()
        except (MedloopError, ValueError) as exc:
            self.refuse(exc)
            return
        self.status.setText("Training ...")
        self.start(compute, done, on_info=self.curve.add)

    def _on_error(self, exc: Exception) -> None:
        """Bad data found in the worker (no tissue, patch too large, too few patches): one line."""
        from medloop.plugins.staining.checks import StainInputError

        if isinstance(exc, StainInputError):
            self.refuse(exc)
            return
        super()._on_error(exc)

    def use_version(self) -> None:
        version = self.version_combo.currentData()
        if version is None:
            return
        try:
            versions = self.versions()
            versions.use(int(version))
        except MedloopError as exc:
            self.refuse(exc)
            return
        self._fill_versions()
        label = f"{versions.name} v{version}"
        self._refresh_transfer_panels(label)
        self.status.setText(f"{label} is in use; the Stain transfer panel has it selected.")

    def _refresh_transfer_panels(self, label: str) -> None:
        from medloop.plugins.staining.widget import StainTransferPanel

        window = getattr(getattr(self.viewer, "window", None), "_qt_window", None)
        for panel in window.findChildren(StainTransferPanel) if window is not None else ():
            panel.refresh_models(select=label)
