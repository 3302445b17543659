"""Correction panel: paint strokes, watch the prediction follow (live), fine-tune, roll back.

Annotations autosave as you paint and are restored when the layer is made again; neither live
updates nor fine-tuning ever write to the annotation layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout

from medloop.app.errors import MedloopError
from medloop.app.gui.layers import class_colors, layer_image
from medloop.app.gui.panel import MethodPanel

if TYPE_CHECKING:
    import napari

BALANCING = ["auto", "mini-batch", "instance", "none"]


class CorrectionPanel(MethodPanel):
    """Strokes -> live head update or full fine-tune of the chosen model, with versions."""

    cancelled_message = "Cancelled; the model and the layers are unchanged."

    def __init__(self, napari_viewer: "napari.Viewer", live_delay_ms: int = 300) -> None:
        super().__init__(napari_viewer)
        self.session = None
        self.session_key = None
        self.saver = None
        self.versions = None
        self.pending_live = False

        self.model_combo = QComboBox()
        self.legend = QLabel()
        self.legend.setWordWrap(True)
        self.balancing_combo = QComboBox()
        self.balancing_combo.addItems(BALANCING)
        self.live_check = QCheckBox("Live: update the prediction after each stroke")
        self.live_check.setChecked(True)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 500)
        self.epochs_spin.setValue(10)
        self.new_layer_button = QPushButton("New / restore annotation layer")
        self.finetune_button = QPushButton("Fine-tune model")
        self.start_buttons.append(self.finetune_button)
        self.version_combo = QComboBox()
        self.rollback_button = QPushButton("Use this version")

        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("", self.legend)
        form.addRow("Balancing", self.balancing_combo)
        form.addRow("Fine-tune epochs", self.epochs_spin)
        versions = QHBoxLayout()
        versions.addWidget(self.version_combo)
        versions.addWidget(self.rollback_button)
        form.addRow("Version", versions)
        buttons = QHBoxLayout()
        buttons.addWidget(self.finetune_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.new_layer_button)
        layout.addWidget(self.live_check)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.live_timer = QTimer(self)
        self.live_timer.setSingleShot(True)
        self.live_timer.setInterval(live_delay_ms)
        self.live_timer.timeout.connect(self.live_update)

        from medloop.models.registry import list_models

        self.models = list_models()
        self.model_combo.addItems([m.name for m in self.models])
        self.refresh_layers()
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self.new_layer_button.clicked.connect(self.annotation_layer)
        self.finetune_button.clicked.connect(self.fine_tune)
        self.rollback_button.clicked.connect(self.rollback)
        self._model_changed()

    # -- state --------------------------------------------------------------------------------
    def _model_changed(self, *_: Any) -> None:
        from medloop.models.registry import user_models_dir
        from medloop.plugins.correction.versions import ModelVersions

        entry = self.base_entry()
        self.session = None
        if entry is None:
            self.legend.setText("No models installed.")
            return
        self.versions = ModelVersions(user_models_dir() / "versions", entry)
        self._fill_versions()
        self.legend.setText(
            "Paint with " + ", ".join(f"{k + 1} = {name}" for k, name in sorted(entry.card.classes.items()))
            + "; 0 = not annotated."
        )

    def _fill_versions(self) -> None:
        self.version_combo.clear()
        self.version_combo.addItems(["base"] + [f"v{v}" for v in self.versions.list()])
        current = self.versions.current
        self.version_combo.setCurrentIndex(self.version_combo.findText("base" if current == 0 else f"v{current}"))

    def base_entry(self):
        i = self.model_combo.currentIndex()
        return self.models[i] if 0 <= i < len(self.models) else None

    def current_entry(self):
        return self.versions.current_entry if self.versions is not None else None

    def _names(self) -> tuple[str, str]:
        name = self.image_combo.currentText()
        return f"{name} annotations", f"{name} prediction"

    def _model_input(self, image) -> np.ndarray:
        from medloop.plugins.segmentation.method import network_input

        return network_input(image, self.current_entry().card)

    # -- annotation layer and autosave --------------------------------------------------------
    def annotation_layer(self):
        """The annotation layer of the chosen image: made (and restored from autosave) if needed."""
        from medloop.app.review.autosave import AnnotationStore, Autosaver

        layer = self.image_layer()
        if layer is None:
            self.status.setText("Open an image first.")
            return None
        ann_name, _ = self._names()
        image = layer_image(layer)
        spatial = image.shape[: image.ndim]
        if ann_name in self.viewer.layers:
            return self.viewer.layers[ann_name]
        store = AnnotationStore.for_image(image)
        saved = store.load(image, ann_name)
        data = saved.astype(np.uint8) if saved is not None else np.zeros(spatial, np.uint8)
        kwargs = image.layer_kwargs()
        kwargs.pop("rgb", None)
        ann = self.viewer.add_labels(data, name=ann_name, metadata={"medloop_image": image.with_array(data)}, **kwargs)
        if self.current_entry() is not None:
            ann.colormap = class_colors({k + 1: v for k, v in self.current_entry().card.classes.items()})
        if self.saver is not None:
            self.saver.close()
        self.saver = Autosaver(store, image, ann_name, lambda: ann.data)
        ann.events.paint.connect(self._annotation_changed)
        ann.events.data.connect(self._annotation_changed)
        self.status.setText("Restored saved annotations." if saved is not None else "Paint strokes; they autosave.")
        return ann

    def _annotation_changed(self, *_: Any) -> None:
        if self.saver is not None:
            self.saver.changed()
        if self.live_check.isChecked():
            self.live_timer.start()

    # -- live mode ----------------------------------------------------------------------------
    def _slice_index(self, layer) -> int:
        point = self.viewer.dims.point[-layer.ndim :]
        return int(np.clip(np.round(layer.world_to_data(point)[0]), 0, layer.data.shape[0] - 1))

    def live_update(self) -> None:
        """Refit the model's head to the strokes (in a worker) and show the new prediction; on a
        volume with a slice-by-slice model, the slice on screen."""
        from medloop.plugins.correction.retrain import LiveSession
        from medloop.plugins.correction.sparse import validate_strokes

        if self.job is not None:
            self.pending_live = True
            return
        layer, entry = self.image_layer(), self.current_entry()
        ann_name, pred_name = self._names()
        if layer is None or entry is None or ann_name not in self.viewer.layers:
            return
        image = layer_image(layer)
        strokes = np.asarray(self.viewer.layers[ann_name].data).copy()
        card = entry.card
        z = self._slice_index(layer) if image.ndim == 3 and card.spatial_dims == 2 else None
        strokes_now = strokes if z is None else strokes[z]
        try:
            validate_strokes(strokes_now, len(card.classes), fine_tune=True)
        except MedloopError as exc:
            self.status.setText(str(exc))
            return
        key = (layer.name, entry.name, z)
        if self.session_key != key:
            x = self._model_input(image)
            network = self._network(entry)
            self.session = LiveSession(network, x if z is None else x[:, z])
            self.session_key = key
        session = self.session
        mode = self.balancing_combo.currentText()
        session.mode = "mini-batch" if mode == "auto" else mode

        def compute(progress, should_stop):
            return session.update(strokes_now, should_stop=should_stop)

        self.start(compute, lambda labels: self._show_live(labels, z, image, pred_name, entry))

    def _network(self, entry):
        from medloop.models.registry import build_model

        return build_model(entry)

    def _show_live(self, labels: np.ndarray, z: int | None, image, pred_name: str, entry) -> None:
        if pred_name not in self.viewer.layers:
            kwargs = image.layer_kwargs()
            kwargs.pop("rgb", None)
            self.viewer.add_labels(
                np.zeros(image.shape[: image.ndim], np.uint8), name=pred_name, opacity=0.5,
                colormap=class_colors(entry.card.classes), **kwargs,
            )
        pred = self.viewer.layers[pred_name]
        if z is None:
            pred.data = labels.astype(np.uint8)
        else:
            pred.data[z] = labels.astype(np.uint8)
            pred.refresh()
        seconds = self.session.timings[-1] if self.session and self.session.timings else 0.0
        self.status.setText(f"Live update {self.session.updates}: {seconds:.2f} s.")

    # -- fine-tune ----------------------------------------------------------------------------
    def fine_tune(self) -> None:
        """Fine-tune the current version on every annotated slice/image; save a new version."""
        from napari.utils.notifications import show_error

        from medloop.plugins.correction.retrain import default_fine_tune_config, fine_tune
        from medloop.plugins.correction.sparse import validate_strokes

        layer, entry = self.image_layer(), self.current_entry()
        ann_name, _ = self._names()
        if layer is None or entry is None or ann_name not in self.viewer.layers:
            show_error("choose an image and a model, and paint strokes in its annotation layer first")
            return
        image = layer_image(layer)
        strokes = np.asarray(self.viewer.layers[ann_name].data).copy()
        card = entry.card
        try:
            counts = validate_strokes(strokes, len(card.classes), fine_tune=True)
        except MedloopError as exc:
            show_error(str(exc))
            return
        x = self._model_input(image)
        if image.ndim == 3 and card.spatial_dims == 2:
            pairs = [(x[:, k], strokes[k]) for k in range(strokes.shape[0]) if strokes[k].any()]
        else:
            pairs = [(x, strokes)]
        config = default_fine_tune_config(epochs=self.epochs_spin.value())
        mode = self.balancing_combo.currentText()
        self.status.setText(f"Fine-tuning {entry.name} on {counts['counts']} annotated voxels ...")

        def compute(progress, should_stop):
            return fine_tune(entry, pairs, config, mode, progress=progress, should_stop=should_stop, raise_on_stop=True)

        self.start(compute, lambda result: self._save_version(result, counts))

    def _save_version(self, result, counts) -> None:
        new = self.versions.save(
            result.network, metrics={"best_validation_dice": result.best_val_dice}, annotation_counts=counts["counts"],
            note="fine-tuned in the Correction panel",
        )
        self.session = None
        self.session_key = None
        self._fill_versions()
        self.status.setText(f"Saved {new.name} (validation Dice {result.best_val_dice:.3f}).")

    def rollback(self) -> None:
        text = self.version_combo.currentText()
        version = 0 if text == "base" else int(text[1:])
        try:
            entry = self.versions.rollback(version)
        except MedloopError as exc:
            from napari.utils.notifications import show_error

            show_error(str(exc))
            return
        self.session = None
        self.session_key = None
        self.status.setText(f"Using {entry.name}.")

    # -- jobs ---------------------------------------------------------------------------------
    def job_finished(self) -> None:
        if self.pending_live:  # strokes came in while a job ran: catch up now
            self.pending_live = False
            self.live_update()
