"""Correction panel: annotate with strokes, boxes or points; watch the prediction follow (live,
strokes); fine-tune with a live loss/validation curve; roll back; correct masks with undoable tools.

Annotations (labels, boxes and points alike) autosave as you work and are restored when the
layer is made again; neither live updates nor fine-tuning ever write to an annotation layer.
Every fine-tune goes through :func:`~medloop.plugins.correction.headless.run_weak`, the code
path of ``medloop train --weak``, so a session can be replayed headlessly.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListView,
    QListWidget,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from medloop.app.errors import MedloopError
from medloop.app.gui.class_list import ClassList
from medloop.app.gui.curve import CurvePlot
from medloop.app.gui.layers import class_layer_kwargs, layer_image, style_labels
from medloop.app.io.autosave import ANNOTATION_LAYER_SUFFIX, annotation_layer_name
from medloop.app.gui.mask_tools import MaskToolsBox
from medloop.app.io.classes import ANNOTATION_OFFSET
from medloop.app.gui.panel import MethodPanel

if TYPE_CHECKING:
    import napari

    from medloop.plugins.correction.guidance import Suggestion

BALANCING = ["auto", "mini-batch", "instance", "none"]
UNPAINTED = {"Check them": "select", "Learn them (from scratch)": "pseudo", "Ignore them": "off"}
KINDS = {"Strokes (paint labels)": "strokes", "Boxes (rectangles)": "boxes", "Points (one click per object)": "points"}
LAYER_SUFFIX = ANNOTATION_LAYER_SUFFIX


class CorrectionPanel(MethodPanel):
    """Weak annotations -> live head update or full fine-tune of the chosen model, with versions."""

    cancelled_message = "Cancelled; the model and the layers are unchanged."

    def __init__(self, napari_viewer: "napari.Viewer", live_delay_ms: int = 300) -> None:
        super().__init__(napari_viewer)
        self.session = None
        self.session_key = None
        self.saver = None
        self.versions = None
        self.pending_live = False
        self.warm_job = None  # the background warm-up of the live session (its own job)
        self.pending_predict = False

        self.model_combo = QComboBox()
        self.legend = QLabel()
        self.legend.setWordWrap(True)
        self.kind_combo = QComboBox()
        self.kind_combo.addItems(list(KINDS))
        self.balancing_combo = QComboBox()
        self.balancing_combo.addItems(BALANCING)
        self.unannotated_combo = QComboBox()
        self.unannotated_combo.addItems(list(UNPAINTED))
        self.unannotated_combo.setToolTip(
            "What fine-tuning does with the pixels nobody painted: a pixel classifier trained on your strokes "
            "checks them (the epoch kept must agree with it where it is sure), or also teaches them (best from "
            "scratch), or they are ignored"
        )
        self.boundary_check = QCheckBox("Boundary loss")
        self.boundary_check.setToolTip("For small structures; needs fully painted tiles")
        self.rounds_spin = QSpinBox()
        self.rounds_spin.setRange(1, 20)
        self.rounds_spin.setValue(6)  # Gupta et al.'s best round
        self.stage2_check = QCheckBox("Stage 2: learn from other images")
        self.stage2_check.setToolTip("Stage 2 (Cues 2): also learn from the other open images of the same kind")
        self.crf_check = QCheckBox("CRF-loss fine-tune stage")
        self.live_check = QCheckBox("Live: update after each stroke")
        self.live_check.setToolTip("Refit the model's head and update the prediction after each stroke")
        self.live_check.setChecked(True)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 500)
        self.epochs_spin.setValue(10)
        self.new_layer_button = QPushButton("New / restore annotation layer")
        self.finetune_button = QPushButton("Fine-tune model")
        self.start_buttons.append(self.finetune_button)
        self.curve = CurvePlot()
        self.version_combo = QComboBox()
        self.rollback_button = QPushButton("Use this version")
        self.tools = MaskToolsBox(napari_viewer, on_edit=self._layer_edited)
        self.class_list = ClassList(napari_viewer)
        self.guidance = GuidanceBox(napari_viewer, on_layers_added=self._guidance_layers_added)

        self._build_layout()

        self.live_timer = QTimer(self)
        self.live_timer.setSingleShot(True)
        self.live_timer.setInterval(live_delay_ms)
        self.live_timer.timeout.connect(self.live_update)

        from medloop.models.registry import list_models

        self.models = list_models()
        self.model_combo.addItems([m.name for m in self.models])
        self.refresh_layers()
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self.kind_combo.currentIndexChanged.connect(self._kind_changed)
        self.new_layer_button.clicked.connect(self.annotation_layer)
        self.finetune_button.clicked.connect(self.fine_tune)
        self.rollback_button.clicked.connect(self.rollback)
        self._model_changed()
        self._kind_changed()

    def _build_layout(self) -> None:
        """The form (each mode's options in their own group), buttons, curve, status, mask
        tools; the whole panel scrolls."""
        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("", self.legend)
        form.addRow("Annotate with", self.kind_combo)
        # Each mode's options only in that mode (folded away in the others).
        self.stroke_options = _option_group("Stroke options", [("Balancing", self.balancing_combo), ("Unpainted pixels", self.unannotated_combo), ("", self.boundary_check)])
        self.box_options = _option_group("Box options", [("Box rounds", self.rounds_spin), ("", self.stage2_check)])
        self.point_options = _option_group("Point options", [("", self.crf_check)])
        form.addRow(self.stroke_options)
        form.addRow(self.box_options)
        form.addRow(self.point_options)
        form.addRow("Fine-tune epochs", self.epochs_spin)
        versions = QHBoxLayout()
        versions.addWidget(self.version_combo, 1)
        versions.addWidget(self.rollback_button)
        self.rollback_button.setMinimumWidth(self.rollback_button.fontMetrics().horizontalAdvance(self.rollback_button.text()) + 28)
        self.rollback_button.setToolTip("Make the chosen version current and predict the image with it")
        form.addRow("Version", versions)
        buttons = QHBoxLayout()
        buttons.addWidget(self.finetune_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.new_layer_button)
        layout.addWidget(self.class_list)
        layout.addWidget(self.live_check)
        layout.addWidget(self.guidance)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.curve)
        layout.addWidget(self.status)
        layout.addWidget(self.tools)
        layout.addStretch(1)
        self.make_scrollable()

    # -- state --------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return KINDS[self.kind_combo.currentText()]

    def set_kind(self, kind: str) -> None:
        self.kind_combo.setCurrentText(next(text for text, k in KINDS.items() if k == kind))

    def _kind_changed(self, *_: Any) -> None:
        strokes = self.kind == "strokes"
        for widget in (self.balancing_combo, self.boundary_check, self.live_check):
            widget.setEnabled(strokes)
        self.rounds_spin.setEnabled(self.kind == "boxes")
        self.stage2_check.setEnabled(self.kind == "boxes")
        self.crf_check.setEnabled(self.kind == "points")
        for group, kind in ((self.stroke_options, "strokes"), (self.box_options, "boxes"), (self.point_options, "points")):
            group.setVisible(self.kind == kind)
        self.guidance.setVisible(strokes)
        self._model_changed()

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
        if self.kind == "strokes":
            self.legend.setText("Pick a class in the class list and paint; erasing (0) = not annotated.")
        elif self.kind == "boxes":
            self.legend.setText("Draw a rectangle around every object (boxes must be exhaustive); needs a 2-class model.")
        else:
            self.legend.setText("Click once on every object (centre); needs a 2-class model.")
        self._explain_unsuitable_model()

    def unsuitable_model(self) -> str | None:
        """Why the chosen model cannot be fine-tuned from this kind of annotation (None: it can).
        Boxes and points need a 2-D model with two classes (background / object)."""
        entry = self.base_entry()
        if entry is None or self.kind == "strokes":
            return None
        card = entry.card
        if card.spatial_dims == 2 and len(card.classes) == 2:
            return None
        fitting = [m.name for m in self.models if m.card.spatial_dims == 2 and len(m.card.classes) == 2]
        what = "Boxes" if self.kind == "boxes" else "Points"
        also = (
            f" Pick {', '.join(fitting)}." if fitting
            else " None is installed: register one with 'medloop models register WEIGHTS --card CARD'."
        )
        return (
            f"{what} train a 2-D model with two classes (background / object); {entry.name} is "
            f"{card.spatial_dims}-D with {len(card.classes)} classes.{also}"
        )

    def _explain_unsuitable_model(self) -> None:
        """Fine-tuning is offered only with a model that fits the annotation kind; else say why."""
        reason = self.unsuitable_model()
        self.finetune_button.setEnabled(reason is None and self.job is None)
        self.finetune_button.setToolTip(reason or "Fine-tune a copy of the model on the annotation (in the background)")
        if reason is not None:
            self.status.setText(reason)

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

    def _names(self, kind: str | None = None) -> tuple[str, str]:
        name = self.image_combo.currentText()
        return annotation_layer_name(name, kind or self.kind), f"{name} prediction"

    def _model_input(self, image) -> np.ndarray:
        from medloop.models.inputs import network_input

        return network_input(image, self.current_entry().card)

    # -- annotation layers and autosave -------------------------------------------------------
    def annotation_layer(self):
        """The chosen image's annotation layer of the chosen kind: made (and restored from
        autosave) if needed."""
        from medloop.app.io.autosave import AnnotationStore, Autosaver

        layer = self.image_layer()
        if layer is None:
            self.status.setText("Open an image first.")
            return None
        ann_name, _ = self._names()
        if ann_name in self.viewer.layers:
            return self.viewer.layers[ann_name]
        image = layer_image(layer)
        store = AnnotationStore.for_image(image)
        kwargs = image.layer_kwargs()
        kwargs.pop("rgb", None)
        kind = self.kind
        if kind == "strokes" and self.live_check.isChecked() and self.current_entry() is not None:
            # The live prediction's layer is made now, with the annotation layer (below it, so the
            # strokes stay visible), not on the first stroke: adding a layer costs napari a few
            # hundred ms on the GUI thread, which must not land while the user paints.
            self._prediction_layer(image, self._names("strokes")[1], self.current_entry())
            if self.guidance.enabled:  # likewise the guidance layers
                self.guidance.ensure_layers(layer, image)
            self.warm_live(layer, image)
        if kind == "strokes":
            saved = store.load(image, ann_name)
            data = saved.astype(np.uint8) if saved is not None else np.zeros(image.shape[: image.ndim], np.uint8)
            ann = self.viewer.add_labels(data, name=ann_name, metadata={"medloop_image": image.with_array(data)}, **kwargs)
            entry = self.current_entry()
            if entry is not None:  # paint convention: class k stored as k + 1, shown as class k
                style_labels(ann, entry.card.classes, ANNOTATION_OFFSET)
                self.class_list.set_layer(ann)
            getter = lambda: ann.data  # noqa: E731
            ann.events.paint.connect(self._annotation_changed)
            ann.events.data.connect(self._annotation_changed)
            self._bind_undo(ann)
        else:
            saved = store.load_table(image, ann_name)
            if kind == "boxes":
                shapes = [_rectangle(row) for row in saved] if saved is not None and len(saved) else []
                ann = self.viewer.add_shapes(
                    shapes, shape_type="rectangle", name=ann_name, edge_color="#e69f00", face_color="transparent",
                    edge_width=max(float(np.max(kwargs.get("scale", [1]))), 1.0), **kwargs,
                )
                ann.mode = "add_rectangle"
                getter = lambda: _boxes_of(ann)  # noqa: E731
            else:
                points = saved if saved is not None and len(saved) else np.zeros((0, image.ndim))
                ann = self.viewer.add_points(points, name=ann_name, face_color="#e69f00", size=3, **kwargs)
                ann.mode = "add"
                getter = lambda: np.asarray(ann.data)  # noqa: E731
            ann.events.data.connect(self._annotation_changed)
        if self.saver is not None:
            self.saver.close()
        self.saver = Autosaver(store, image, ann_name, getter, table=kind != "strokes")
        self.status.setText("Restored saved annotations." if saved is not None else "Annotate; it autosaves.")
        self.keep_annotations_on_top()
        self.viewer.layers.selection.active = ann
        return ann

    def keep_annotations_on_top(self) -> None:
        """Strokes, boxes and points of the chosen image stay drawn above its prediction (a
        later layer is drawn on top): move them just above it whenever either is added or
        updated."""
        layers = self.viewer.layers
        _, pred_name = self._names()
        below = [n for n in (pred_name, *self.guidance.layer_names(self.image_combo.currentText())) if n in layers]
        if not below:
            return
        for kind in LAYER_SUFFIX:
            ann_name, _ = self._names(kind)
            top = max(layers.index(n) for n in below)
            if ann_name in layers and layers.index(ann_name) < top:
                layers.move(layers.index(ann_name), top + 1)

    def _guidance_layers_added(self) -> None:
        """The guidance layers were just added (on top, selected): the annotations go back
        above them and stay the layer the user paints on."""
        self.keep_annotations_on_top()
        ann_name, _ = self._names()
        if ann_name in self.viewer.layers:
            self.viewer.layers.selection.active = self.viewer.layers[ann_name]

    def _bind_undo(self, layer) -> None:
        """Ctrl+Z / Ctrl+Shift+Z on the annotation layer also tell autosave and live mode."""

        def undo(layer=layer):
            layer.undo()
            self._annotation_changed()

        def redo(layer=layer):
            layer.redo()
            self._annotation_changed()

        layer.bind_key("Control-Z", undo, overwrite=True)
        layer.bind_key("Control-Shift-Z", redo, overwrite=True)

    def _layer_edited(self, layer) -> None:
        """A mask tool changed ``layer``: autosave/live when it is the annotation layer."""
        ann_name, _ = self._names("strokes")
        if layer.name == ann_name:
            self._annotation_changed()

    def _annotation_changed(self, *_: Any) -> None:
        if self.saver is not None:
            self.saver.changed()
        if self.kind == "strokes" and self.live_check.isChecked():
            self.live_timer.start()

    # -- live mode ----------------------------------------------------------------------------
    def _slice_index(self, layer) -> int:
        point = self.viewer.dims.point[-layer.ndim :]
        return int(np.clip(np.round(layer.world_to_data(point)[0]), 0, layer.data.shape[0] - 1))

    def live_update(self) -> None:
        """Refit the model's head to the strokes (in a worker) and show the new prediction; on a
        volume with a slice-by-slice model, the slice on screen."""
        from medloop.plugins.correction.sparse import validate_strokes

        if self.job is not None:
            self.pending_live = True
            return
        layer, entry = self.image_layer(), self.current_entry()
        ann_name, pred_name = self._names("strokes")
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
        session = self.session if self.session_key == key else None
        mode = self.balancing_combo.currentText()
        guiding = self.guidance.enabled and card.spatial_dims == 2

        def compute(progress, should_stop):
            from medloop.models.inputs import network_input
            from medloop.plugins.correction.retrain import LiveSession  # its first import is heavy

            live = session
            if live is None:  # a fresh session: network and inputs are built here, in the worker
                x = network_input(image, entry.card)
                live = LiveSession(self._network(entry), x if z is None else x[:, z])
            live.mode = "mini-batch" if mode == "auto" else mode
            labels = live.update(strokes_now, should_stop=should_stop)
            if not guiding:
                return live, labels, None
            # The prediction goes on screen now; the guidance's slice pass (~0.1 s) follows.
            progress(0, 0, {"live": (live, labels)})
            return live, labels, _guide(live.network_with_head(), live.image, strokes_now, len(card.classes), 5, should_stop)

        def shown(info: dict) -> None:
            if "live" in info:
                self.session, labels = info["live"]
                self.session_key = key
                self._show_live(labels, z, image, pred_name, entry)

        def done(result) -> None:
            self.session, labels, guide = result
            self.session_key = key
            if guide is None:
                self._show_live(labels, z, image, pred_name, entry)
            else:
                self._show_guidance(guide, layer, image, z, card)

        self.start(compute, done, on_info=shown)

    def warm_live(self, layer, image) -> None:
        """Build the live session of the slice on screen in the background (network, features,
        one throwaway head fit), so the first stroke updates like every later one (issue #20:
        2.3 s first stroke in a fresh session). A stroke painted before it is ready builds its own
        session as before; the warmed one is then dropped."""
        from medloop.app.gui.jobs import start_job

        entry = self.current_entry()
        if entry is None or self.job is not None or self.warm_job is not None:
            return
        card = entry.card
        z = self._slice_index(layer) if image.ndim == 3 and card.spatial_dims == 2 else None
        key = (layer.name, entry.name, z)

        def compute(progress, should_stop):
            from medloop.models.inputs import network_input
            from medloop.plugins.correction.retrain import LiveSession

            x = network_input(image, entry.card)
            live = LiveSession(self._network(entry), x if z is None else x[:, z])
            live.warm_up()
            return live

        def done(live) -> None:
            if self.session is None:  # a stroke's own session may have come first
                self.session, self.session_key = live, key

        def finished() -> None:
            self.warm_job = None

        # Its own job, not the panel's: the buttons stay usable while it warms up.
        self.warm_job = start_job(compute, on_done=done, on_error=lambda exc: None, on_finished=finished)

    def _network(self, entry):
        from medloop.models.registry import build_model

        return build_model(entry)

    def _prediction_layer(self, image, pred_name: str, entry):
        if pred_name not in self.viewer.layers:
            kwargs = image.layer_kwargs()
            kwargs.pop("rgb", None)
            self.viewer.add_labels(
                np.zeros(image.shape[: image.ndim], np.uint8), name=pred_name, opacity=0.5,
                **class_layer_kwargs(entry.card.classes), **kwargs,
            )
        self.keep_annotations_on_top()
        return self.viewer.layers[pred_name]

    def _show_live(self, labels: np.ndarray, z: int | None, image, pred_name: str, entry) -> None:
        pred = self._prediction_layer(image, pred_name, entry)
        if z is None:
            pred.data = labels.astype(np.uint8)
        else:
            pred.data[z] = labels.astype(np.uint8)
            pred.refresh()
        seconds = self.session.timings[-1] if self.session and self.session.timings else 0.0
        self.status.setText(f"Live update {self.session.updates}: {seconds:.2f} s.")

    def _show_guidance(self, guide: dict | None, layer, image, z: int | None, card) -> None:
        """Put a worker's guidance (:func:`_guide`) on screen, or its error in the status line."""
        if guide is None:
            return
        if "error" in guide:
            self.status.setText(f"{self.status.text()} Where to paint next failed: {guide['error']}")
            return
        self.guidance.show(layer, image, guide["suggestions"], guide["u"], z, card.classes)
        self.status.setText(f"{self.status.text()} Where to paint next: {guide['seconds']:.2f} s.")

    # -- fine-tune ----------------------------------------------------------------------------
    def _checked_annotation(self, image, entry) -> tuple[Any, dict[str, Any]]:
        """The annotation of the chosen kind, validated on the GUI thread before any work."""
        from medloop.plugins.correction.boxes import BoxError, boxes_from_shapes
        from medloop.plugins.correction.points import clean_points
        from medloop.models.inputs import check_input
        from medloop.plugins.correction.sparse import validate_strokes
        from medloop.plugins.correction.weaklabels import AnnotationError

        ann_name, _ = self._names()
        if ann_name not in self.viewer.layers:
            raise AnnotationError(f"make the {LAYER_SUFFIX[self.kind]} layer and annotate the image first")
        ann = self.viewer.layers[ann_name]
        card = entry.card
        check_input(image, card)  # the image itself: channels, dimensionality, NaN/Inf (no normalising here)
        layer = self.image_layer()
        if not (np.allclose(ann.scale[-image.ndim :], layer.scale[-image.ndim :]) and np.allclose(ann.translate[-image.ndim :], layer.translate[-image.ndim :])):
            raise AnnotationError(
                f"layer {ann.name!r} is not on the grid of {layer.name!r} (scale or translate differ); "
                "annotate in the layer made by 'New / restore annotation layer'"
            )
        if self.kind == "strokes":
            strokes = np.asarray(ann.data).copy()
            if strokes.shape != image.shape[: image.ndim]:
                raise AnnotationError(
                    f"layer {ann.name!r} has shape {strokes.shape} but {layer.name!r} has {image.shape[: image.ndim]}; "
                    "annotate in the layer made by 'New / restore annotation layer'"
                )
            return strokes, validate_strokes(strokes, len(card.classes), fine_tune=True)
        if image.ndim != 2:
            raise AnnotationError(f"{self.kind} work on 2-D images; {self.image_combo.currentText()} is {image.ndim}-D")
        if len(card.classes) != 2:
            raise AnnotationError(f"{self.kind} need a two-class (background / foreground) model; {card.name} has {len(card.classes)}")
        if self.kind == "boxes":
            boxes = boxes_from_shapes(ann.data, ann.shape_type, image.shape[:2], layer_name=ann.name)
            if not len(boxes):
                raise BoxError(f"Box layer {ann.name!r} is empty: draw a rectangle around every object.")
            return boxes, {"boxes": int(len(boxes))}
        points = clean_points(np.asarray(ann.data)[:, -2:], image.shape[:2])
        return points.astype(float), {"points": int(len(points))}

    def fine_tune(self) -> None:
        """Fine-tune the current version on the annotation (every annotated slice of a volume);
        save a new version and show its prediction."""

        from napari.utils.notifications import show_error

        from medloop.plugins.correction.headless import predict_on_grid, run_weak
        from medloop.plugins.correction.retrain import default_fine_tune_config

        layer, entry = self.image_layer(), self.current_entry()
        if layer is None or entry is None:
            show_error("choose an image and a model first")
            return
        image = layer_image(layer)
        try:
            annotation, counts = self._checked_annotation(image, entry)
        except MedloopError as exc:
            show_error(str(exc))
            return
        kind, mode = self.kind, self.balancing_combo.currentText()
        guiding = kind == "strokes" and self.guidance.enabled and entry.card.spatial_dims == 2
        rounds, crf, boundary = self.rounds_spin.value(), self.crf_check.isChecked(), self.boundary_check.isChecked()
        config = replace(default_fine_tune_config(), epochs=self.epochs_spin.value())
        unlabeled = self._unlabeled_images(layer) if kind == "boxes" and self.stage2_check.isChecked() else []
        unannotated = UNPAINTED[self.unannotated_combo.currentText()]
        _, pred_name = self._names()
        self.curve.clear()
        self.status.setText(f"Fine-tuning {entry.name} on {kind} ...")

        def compute(progress, should_stop):
            run = run_weak(
                kind, image, annotation, entry, mode=mode, rounds=rounds,
                progress=progress, should_stop=should_stop, config=config, crf=crf, boundary=boundary,
                unlabeled=unlabeled, unannotated=unannotated,
            )
            from medloop.plugins.correction.headless import model_input

            x = model_input(image, entry.card)
            labels = predict_on_grid(run.network, x)
            # not cancellable: a cancel now would throw the finished fine-tune away
            guide = _guide(run.network, x, annotation, len(entry.card.classes), 10) if guiding else None
            return run, labels, guide

        def done(result) -> None:
            run, labels, guide = result
            self._save_version(run)
            pred = self._prediction_layer(image, pred_name, entry)
            pred.data = labels.astype(np.uint8)
            self._show_guidance(guide, layer, image, None, entry.card)

        self.start(compute, done, on_info=self.curve.add_epoch)

    def _unlabeled_images(self, layer) -> list:
        """The other open image layers of the same kind (dimensionality, channels): stage 2's
        unlabelled images."""
        image = layer_image(layer)
        others = []
        for other in self.viewer.layers:
            if other is layer or other._type_string != "image":
                continue
            candidate = layer_image(other)
            if candidate.ndim == image.ndim and candidate.channel_axis == image.channel_axis and (
                not image.channel_axis or candidate.shape[-1] == image.shape[-1]
            ):
                others.append(candidate)
        return others

    def _save_version(self, run) -> None:
        parent_dice, parent_name = self._parent_dice()
        new = self.versions.save(
            run.network, metrics=run.metrics, annotation_counts=run.annotation_counts,
            note=f"fine-tuned on {run.kind} in the Correction panel",
        )
        self.session = None
        self.session_key = None
        self._fill_versions()
        dice = run.metrics.get("best_val_dice")
        strokes, agree = run.metrics.get("val_stroke_dice"), run.metrics.get("unannotated_agreement")
        if isinstance(strokes, float) and isinstance(agree, float):  # the score is their mean
            tail = f" (held-out stroke Dice {strokes:.3f}, agreement on unpainted pixels {agree:.3f})"
        else:
            tail = f" (held-out stroke Dice {dice:.3f})" if isinstance(dice, float) else ""
        self.status.setText(f"Saved {new.name}{tail}; the prediction shows it.")
        fell = self.dice_fell(parent_dice, dice, parent_name)
        if fell:
            from napari.utils.notifications import show_warning

            self.status.setText(f"{self.status.text()} Warning: {fell}")
            show_warning(fell)

    @staticmethod
    def dice_fell(parent_dice: Any, dice: Any, parent_name: str) -> str | None:
        """The warning when a new version's held-out Dice is below its parent's, else None."""
        if isinstance(parent_dice, (int, float)) and isinstance(dice, (int, float)) and dice < parent_dice:
            return (
                f"held-out Dice fell from {parent_dice:.3f} ({parent_name}) to {dice:.3f}; "
                f"choose {parent_name} under Version and press 'Use this version' to go back"
            )
        return None

    def _parent_dice(self) -> tuple[Any, str]:
        """The held-out Dice of the version a fine-tune starts from (None for a base model), and
        its name."""
        current = self.versions.current
        training = self.versions.entry(current).card.raw.get("training") or {} if current else {}
        return (training.get("metrics") or {}).get("best_val_dice"), ("base" if current == 0 else f"v{current}")

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
        self.predict_with_current()

    def predict_with_current(self) -> None:
        """Predict the chosen image with the version in use (a job, off the GUI thread) and show
        it in the prediction layer."""
        from medloop.plugins.correction.headless import model_input, predict_on_grid

        layer, entry = self.image_layer(), self.current_entry()
        if layer is None or entry is None:
            return
        if self.job is not None:  # a live update or fine-tune runs: predict when it is done
            self.pending_predict = True
            return
        image = layer_image(layer)
        _, pred_name = self._names()

        def compute(progress, should_stop):
            from medloop.models.registry import build_model

            return predict_on_grid(build_model(entry), model_input(image, entry.card))

        def done(labels) -> None:
            pred = self._prediction_layer(image, pred_name, entry)
            pred.data = np.asarray(labels).astype(np.uint8)
            self.status.setText(f"Using {entry.name}; the prediction shows it.")

        self.start(compute, done)

    # -- jobs ---------------------------------------------------------------------------------
    def release(self) -> None:
        if self.warm_job is not None:
            self.warm_job.cancel()
        self.live_timer.stop()
        if self.saver is not None:
            self.saver.close()  # writes what is pending
            self.saver = None

    def job_finished(self) -> None:
        self._explain_unsuitable_model()  # the job's end re-enabled the start buttons
        if self.pending_predict:  # "Use this version" was pressed while a job ran
            self.pending_predict = False
            self.predict_with_current()
            return
        if self.pending_live:  # strokes came in while a job ran: catch up now
            self.pending_live = False
            self.live_update()


def _guide(network, x, strokes, num_classes: int, n: int, should_stop=None) -> dict[str, Any]:
    """Where to paint next (in the worker): ``suggestions``, the uncertainty ``u`` and the
    ``seconds`` it took, or the ``error`` that stopped it (guidance is advice: its failure must
    not cost the prediction it comes with). Cancelling still cancels."""
    from medloop.app.engine.jobs import JobCancelled
    from medloop.plugins.correction.guidance import suggest_with_teacher

    t0 = time.perf_counter()
    try:
        suggestions, u, _ = suggest_with_teacher(network, np.asarray(x), np.asarray(strokes), num_classes, n=n, should_stop=should_stop)
    except JobCancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - shown in the status line
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"suggestions": suggestions, "u": u, "seconds": time.perf_counter() - t0}


def _option_group(title: str, rows: list[tuple[str, Any]]) -> QGroupBox:
    """A titled group of one mode's options (shown only in that mode)."""
    box = QGroupBox(title)
    form = QFormLayout(box)
    for label, widget in rows:
        form.addRow(label, widget)
    return box


def _rectangle(row: np.ndarray) -> np.ndarray:
    y0, x0, y1, x1 = (float(v) for v in row)
    return np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])


def _boxes_of(layer) -> np.ndarray:
    """``(N, 4)`` vertex extents (y0, x0, y1, x1) of a Shapes layer's shapes, for autosave (no
    validation; a rotated rectangle comes back as its axis-aligned hull)."""
    rows = []
    for vertices in layer.data:
        v = np.asarray(vertices)[:, -2:]
        rows.append([v[:, 0].min(), v[:, 1].min(), v[:, 0].max(), v[:, 1].max()])
    return np.asarray(rows, dtype=float).reshape(-1, 4)


# -- "Where to paint next" (issue #18 §1, GUI side) -------------------------------------------------
# The uncertainty of the current model as an overlay on the image, the ranked regions as rectangles
# and a list, and "Go to next" that moves the view to them (ilastik's uncertainty view, MONAI
# Label's next sample). The numbers come from plugins/correction/guidance.py (Qt-free), computed
# in the panel's worker; this box only shows them. Its two layers are made once per image and their
# data swapped afterwards (adding a layer costs napari a few hundred ms on the GUI thread).
EXPLANATION = (
    "Bright = the model is unsure (close call, flips change its answer, or a pixel classifier on "
    "your strokes disagrees). Regions are ranked by that and by distance from your strokes."
)
#: The box to go to fills about this share of the canvas (the rest is context).
BOX_SHARE = 1 / 3
EDGE_COLOR = "cyan"


class GuidanceBox(QGroupBox):
    """The "Where to paint next" group: a switch, the ranked list, "Go to next", a note.

    ``show(image_layer, image, suggestions, u, z, classes)`` puts a result on screen;
    ``on_layers_added()`` runs after the box had to add its layers (the panel keeps its
    annotation layer on top and selected)."""

    def __init__(self, napari_viewer: "napari.Viewer", on_layers_added: Callable[[], None] | None = None) -> None:
        super().__init__("Where to paint next")
        self.viewer = napari_viewer
        self.on_layers_added = on_layers_added
        self.suggestions: list[Suggestion] = []
        self.image_name: str | None = None
        self.position = -1  # the suggestion the view was last moved to (-1: none yet)
        self.show_check = QCheckBox("Show where to paint next")
        self.show_check.setChecked(True)
        self.show_check.setToolTip("After each live update or fine-tune, compute the model's uncertainty and rank regions")
        self.list = QListWidget()
        # rows wrap to the dock's width (a docked panel never scrolls sideways)
        self.list.setWordWrap(True)
        self.list.setResizeMode(QListView.ResizeMode.Adjust)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.list.setMinimumHeight(160)
        self.list.setToolTip("Regions ranked by uncertainty and distance from the strokes; select one to go there")
        self.next_button = QPushButton("Go to next")
        self.next_button.setToolTip("Move the view to the next region in rank order")
        self.next_button.setEnabled(False)
        self.note = QLabel(EXPLANATION)
        self.note.setWordWrap(True)
        layout = QVBoxLayout(self)
        for widget in (self.show_check, self.list, self.next_button, self.note):
            layout.addWidget(widget)
        self.show_check.toggled.connect(self._toggled)
        self.next_button.clicked.connect(self.go_next)
        self.list.currentRowChanged.connect(self._row_chosen)

    @property
    def enabled(self) -> bool:
        return self.show_check.isChecked()

    @staticmethod
    def layer_names(image_name: str) -> tuple[str, str]:
        return f"{image_name} uncertainty", f"{image_name} suggestions"

    # -- layers -------------------------------------------------------------------------------
    def ensure_layers(self, image_layer, image) -> tuple[Any, Any]:
        """The uncertainty (Image) and suggestions (Shapes) layers of ``image_layer``, on its
        grid; made when missing."""
        u_name, s_name = self.layer_names(image_layer.name)
        layers = self.viewer.layers
        kwargs = image.layer_kwargs()
        for key in ("rgb", "multiscale"):
            kwargs.pop(key, None)
        spatial = tuple(image.shape[: image.ndim])
        added = False
        if u_name not in layers:
            self.viewer.add_image(
                np.zeros(spatial, np.float32), name=u_name, colormap="magma", blending="additive",
                opacity=0.6, contrast_limits=(0.0, 1.0), visible=self.enabled, **kwargs,
            )
            added = True
        if s_name not in layers:
            self.viewer.add_shapes(
                ndim=image.ndim, name=s_name, edge_color=EDGE_COLOR, face_color="transparent", edge_width=0.5,
                features={"rank": np.zeros(0, int)},
                text={"string": "{rank}", "color": EDGE_COLOR, "size": 16, "anchor": "center"},
                visible=self.enabled, **kwargs,
            )
            added = True
        if added and self.on_layers_added is not None:
            self.on_layers_added()
        return layers[u_name], layers[s_name]

    def _toggled(self, on: bool) -> None:
        if self.image_name is None:
            return
        for name in self.layer_names(self.image_name):
            if name in self.viewer.layers:
                self.viewer.layers[name].visible = on

    # -- results ------------------------------------------------------------------------------
    def show(
        self, image_layer, image, suggestions: Sequence[Suggestion], u: np.ndarray, z: int | None,
        classes: dict[int, str],
    ) -> None:
        """Show a result: ``u`` the uncertainty of the whole image (``z`` None) or of slice ``z``
        of a volume (whose suggestions then lie on slice ``z``; the other slices show 0)."""
        u_layer, s_layer = self.ensure_layers(image_layer, image)
        if z is None:
            u_layer.data = np.asarray(u, np.float32)
        else:
            data = u_layer.data
            data[...] = 0
            data[z] = u
            u_layer.refresh()
        u_layer.contrast_limits = (0.0, 1.0)
        self.suggestions = [s if z is None else replace(s, slice=z) for s in suggestions]
        self.image_name, self.position = image_layer.name, -1
        s_layer.selected_data = set()
        from medloop.plugins.correction.guidance import suggestion_rectangle

        s_layer.data = [suggestion_rectangle(s) for s in self.suggestions]
        s_layer.features = {"rank": np.array([s.rank for s in self.suggestions], int)}
        s_layer.refresh_text()
        self._fill_list(classes)

    def _fill_list(self, classes: dict[int, str]) -> None:
        from medloop.plugins.correction.guidance import row_text

        self.list.blockSignals(True)
        self.list.clear()
        for s in self.suggestions:
            self.list.addItem(row_text(s, classes))
            self.list.item(self.list.count() - 1).setToolTip(
                f"score {s.score:.3f}; {s.distance_px:.0f} px from the nearest stroke" if np.isfinite(s.distance_px)
                else f"score {s.score:.3f}; no strokes yet"
            )
        self.list.blockSignals(False)
        self.next_button.setEnabled(bool(self.suggestions))

    def clear(self) -> None:
        self.suggestions, self.position = [], -1
        self.list.clear()
        self.next_button.setEnabled(False)

    # -- navigation ---------------------------------------------------------------------------
    def go_next(self) -> None:
        """Move to the next suggestion in rank order (after the last: the first)."""
        if self.suggestions:
            self.go_to((self.position + 1) % len(self.suggestions))

    def _row_chosen(self, row: int) -> None:
        if 0 <= row < len(self.suggestions):
            self.go_to(row)

    def go_to(self, index: int) -> None:
        """Show suggestion ``index``: its slice, the camera centred on its box, zoomed so the box
        fills about :data:`BOX_SHARE` of the canvas."""
        if self.image_name not in self.viewer.layers:
            return
        from medloop.plugins.correction.guidance import suggestion_corners

        layer = self.viewer.layers[self.image_name]
        s = self.suggestions[index]
        corners = np.array([layer.data_to_world(c) for c in suggestion_corners(s)])
        centre, size = corners.mean(0), corners.max(0) - corners.min(0)
        dims = self.viewer.dims
        offset = dims.ndim - layer.ndim  # world axis of the layer's axis 0
        if s.slice is not None:
            dims.set_point(offset, float(centre[0]))
        shown = [d - offset for d in dims.displayed if d >= offset]
        self.viewer.camera.center = tuple(float(centre[d]) for d in shown)
        canvas = np.asarray(self.viewer.canvas.size, float)[-len(shown[-2:]):]
        extent = np.maximum(size[shown[-2:]], 1e-6)
        self.viewer.camera.zoom = float(np.min(canvas * BOX_SHARE / extent))
        self.position = index
        self.list.blockSignals(True)
        self.list.setCurrentRow(index)
        self.list.blockSignals(False)
