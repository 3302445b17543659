"""Lesion panels: *Synthesize lesion* (draw a rectangle on a healthy image, get a lesion) and
*Anomaly map* (an autoencoder's residual overlay, a threshold slider, Calibrate t, Send to
Correction).

Outputs are always new layers on the source's grid (the source is never modified). Models load
and every computation runs in a worker; the newest request wins (a box drawn while a lesion is
being made is synthesised right after). Bad input shows one line in the status line and adds no
layer. All compute is in :mod:`.synthesize`, :mod:`.residual`, :mod:`.apply` and :mod:`.zoo`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QPushButton, QSlider,
    QSpinBox, QVBoxLayout,
)

from medloop.app.errors import MedloopError
from medloop.app.gui.layers import class_layer_kwargs, layer_image
from medloop.app.gui.panel import MethodPanel

if TYPE_CHECKING:
    import napari

NO_FILTER = "(no filter)"
IMAGE_MASK = "(image > 0)"
#: Residual thresholds the slider spans (t itself may be anything in [0, 1] in the spin box).
SLIDER_MAX_T = 0.25
SLIDER_STEPS = 1000
LESION_COLOUR = "#d55e00"
LESION_CLASSES = {0: "background", 1: "lesion"}
READY_BOXES = "Ready: make a box layer and draw a rectangle on the healthy image."
READY_MAP = "Ready: choose an image in [0, 1] and press Compute map."
PER_SLICE, OVER_SLICES = "5 × 5 within each slice", "5 × 5 × 5 over the volume"


class _LesionPanel(MethodPanel):
    """The shared frame: intro, a form, progress + Cancel, the status line; models cached by name
    (loaded in a worker the first time they are used)."""

    def __init__(self, napari_viewer: "napari.Viewer") -> None:
        super().__init__(napari_viewer)
        self.form = QFormLayout()
        self.models: dict[str, Any] = {}
        self._pending_preload: tuple[list[tuple[str, str]], str] | None = None

    def job_finished(self) -> None:
        if self._pending_preload is not None:
            names, ready = self._pending_preload
            self._pending_preload = None
            self.preload(names, ready)

    def _finish_layout(self, intro_text: str, buttons: list[QPushButton]) -> None:
        layout = QVBoxLayout(self)
        intro = QLabel(intro_text)
        intro.setWordWrap(True)
        layout.addWidget(intro)
        layout.addLayout(self.form)
        row = QHBoxLayout()
        for button in buttons:
            row.addWidget(button)
        layout.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(self.progress)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.make_scrollable()
        self.refresh_layers()

    def preload(self, names: list[tuple[str, str]], ready: str) -> None:
        """Load the models ``(name, kind)`` in a worker now, when the panel opens (importing torch
        and reading weights holds the interpreter lock in long chunks): the first request then
        runs like every later one. Afterwards the collector's heap is frozen (see
        :mod:`medloop.app.gui.warmup`), so a later full collection does not stall the window."""
        wanted = [(n, k) for n, k in names if n and n not in self.models]
        if not wanted:
            return
        if self.job is not None:  # after the running job (e.g. the previous model's preload)
            self._pending_preload = (names, ready)
            return

        def compute(progress, should_stop):
            import gc

            for name, kind in wanted:
                self.model(name, kind)
            gc.freeze()

        self.status.setText("Loading the model ...")
        self.start(compute, lambda _: self.status.setText(ready))

    def model(self, name: str, kind: str) -> Any:
        """The loaded model ``name`` (call from a worker: the first load reads and checks weights)."""
        from medloop.plugins.lesions.zoo import load_lesion_model

        if name not in self.models:
            self.models[name] = load_lesion_model(name, kind)
        return self.models[name]

    def layer_named(self, combo: QComboBox):
        name = combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def put_layer(self, name: str, data: np.ndarray, kind: str, grid: dict[str, Any], **style: Any):
        """Replace the data of layer ``name`` (made on ``grid`` if missing) and return it."""
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = data
            return layer
        return getattr(self.viewer, f"add_{kind}")(data, name=name, **grid, **style)


def _grid(image_layer) -> dict[str, Any]:
    """The source layer's own placement (scale, translate, units and any affine), so results
    overlay it exactly whatever its units."""
    grid: dict[str, Any] = {"scale": tuple(image_layer.scale), "translate": tuple(image_layer.translate)}
    units = getattr(image_layer, "units", None)
    if units is not None:
        grid["units"] = tuple(str(u) for u in units)
    affine = np.asarray(image_layer.affine.affine_matrix)
    if not np.allclose(affine, np.eye(len(affine))):
        grid["affine"] = affine
    return grid


def boxes_in_pixels(shapes_layer, image_layer) -> list[tuple[int, int, int, int]]:
    """The rectangles of ``shapes_layer`` as half-open pixel boxes of ``image_layer``: a rectangle
    covers the pixels whose centres it contains (napari pixel i spans [i − 0.5, i + 0.5])."""
    boxes = []
    for kind, vertices in zip(shapes_layer.shape_type, shapes_layer.data):
        if kind != "rectangle":
            continue
        corners = np.array([image_layer.world_to_data(shapes_layer.data_to_world(v)) for v in np.asarray(vertices)])
        lo, hi = corners[:, -2:].min(axis=0), corners[:, -2:].max(axis=0)
        y0, x0 = (int(v) for v in np.ceil(lo - 1e-9))
        y1, x1 = (int(v) + 1 for v in np.floor(hi + 1e-9))
        boxes.append((y0, x0, y1, x1))
    return boxes


class SynthesizeLesionPanel(_LesionPanel):
    """Gupta et al.'s box → lesion: each new rectangle makes its lesion in the background."""

    def __init__(self, napari_viewer: "napari.Viewer") -> None:
        super().__init__(napari_viewer)
        from medloop.plugins.lesions.zoo import list_lesion_models

        self.boxes_combo = QComboBox()
        self.new_boxes_button = QPushButton("New box layer")
        self.new_boxes_button.clicked.connect(self.new_box_layer)
        self.translator_combo = QComboBox()
        self.translator_combo.addItems([c.name for c in list_lesion_models("translator")])
        self.filter_combo = QComboBox()
        self.filter_combo.addItems([NO_FILTER, *[c.name for c in list_lesion_models("classifier")]])
        self.scale_combo = QComboBox()
        self.scale_combo.addItems(["2", "1"])
        self.n_spin = _double(0.25, 8.0, 1.0, 0.25, 2)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.t_spin = _double(0.0, 1.0, 0.9, 0.05, 2)
        self.mask_check = QCheckBox("Derived pseudo-mask layer")
        self.mask_check.setToolTip("|out − in| > 5 % of the image's range inside each box (a derived label: "
                                   "the box is the synthetic lesion's only ground truth)")
        self.mask_check.setChecked(True)
        self.no_bone_check = QCheckBox("Allow patches without bone (mean < 0.15)")
        self.auto_check = QCheckBox("Synthesise on each new box")
        self.auto_check.setChecked(True)
        self.run_button = QPushButton("Synthesize")
        self.run_button.clicked.connect(self.run)
        self.reroll_button = QPushButton("Re-roll (seed + 1)")
        self.reroll_button.clicked.connect(self.reroll)
        self.batch_button = QPushButton("Batch folder ...")
        self.batch_button.clicked.connect(self.choose_batch)
        self.start_buttons += [self.run_button, self.reroll_button, self.batch_button]
        self._pending = False
        self._watched = None
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(150)
        self._debounce.timeout.connect(self.run)
        self.boxes_combo.currentTextChanged.connect(self._watch_boxes)
        for label, widget in (("Healthy image", self.image_combo), ("Boxes (Shapes)", self.boxes_combo),
                              ("", self.new_boxes_button), ("Translator", self.translator_combo),
                              ("Crop scale s", self.scale_combo), ("Blend exponent n", self.n_spin),
                              ("Seed", self.seed_spin), ("Filter classifier", self.filter_combo),
                              ("Keep if score ≥ t", self.t_spin), ("", self.mask_check), ("", self.no_bone_check),
                              ("", self.auto_check)):
            self.form.addRow(label, widget)
        self._finish_layout(
            "Draw rectangles on a healthy 2-D image: each makes a lesion in a new layer '<image>_lesion' "
            "(the source is not changed). The crop is s × the box's longer side, placed around the box as the translator "
            "was trained (centred for lesion-unit-bone; at random, by the seed, for the paper's rule); the filter scores "
            "the result and keeps it if score ≥ t.",
            [self.run_button, self.reroll_button, self.batch_button])
        self.preload([(self.translator_combo.currentText(), "translator")], READY_BOXES)
        self.translator_combo.currentTextChanged.connect(lambda name: self.preload([(name, "translator")], READY_BOXES))

    # -- layers -------------------------------------------------------------------------------
    def refresh_layers(self, *_: Any) -> None:
        super().refresh_layers()
        self.offer_layers(self.boxes_combo, "shapes")

    def new_box_layer(self):
        """A rectangle-drawing Shapes layer on the chosen image's grid."""
        layer = self.image_layer()
        if layer is None:
            self.status.setText("Open a healthy 2-D image first.")
            return None
        self._make_outputs(layer)
        name = f"{layer.name} lesion boxes"
        if name not in self.viewer.layers:
            self.viewer.add_shapes(name=name, shape_type="rectangle", edge_color=LESION_COLOUR, face_color="transparent",
                                   edge_width=1.0, **_grid(layer))
        shapes = self.viewer.layers[name]
        self.boxes_combo.setCurrentText(name)
        self.viewer.layers.selection.active = shapes
        shapes.mode = "add_rectangle"
        self.status.setText("Draw a rectangle around where the lesion should appear.")
        return shapes

    def _make_outputs(self, image_layer) -> None:
        """The result layers, hidden until the first lesion, made with the box layer (below it):
        adding a layer costs napari 100-300 ms on the GUI thread, which must not land while a
        lesion is on its way (the drawn box's result then only swaps their data)."""
        grid, name = _grid(image_layer), image_layer.name
        style = {"colormap": image_layer.colormap.name, "contrast_limits": tuple(image_layer.contrast_limits)}
        if f"{name}_lesion" not in self.viewer.layers:
            self.viewer.add_image(np.array(image_layer.data, copy=True), name=f"{name}_lesion", visible=False, **grid, **style)
        if self.mask_check.isChecked() and f"{name}_lesion_mask" not in self.viewer.layers:
            mask = self.viewer.add_labels(np.zeros(np.shape(image_layer.data), np.uint8), name=f"{name}_lesion_mask",
                                          visible=False, opacity=0.8, **grid, **class_layer_kwargs(LESION_CLASSES))
            mask.contour = 1  # an outline: the synthetic lesion stays visible inside it

    def _watch_boxes(self, *_: Any) -> None:
        if self._watched is not None:
            self._watched.events.data.disconnect(self._boxes_changed)
        self._watched = self.layer_named(self.boxes_combo)
        if self._watched is not None:
            self._watched.events.data.connect(self._boxes_changed)

    def _boxes_changed(self, event: Any = None) -> None:
        action = str(getattr(event, "action", "")) if event is not None else ""
        if self.auto_check.isChecked() and not action.startswith(("adding", "changing", "removing")):
            self._debounce.start()

    # -- running ------------------------------------------------------------------------------
    def reroll(self) -> None:
        self.seed_spin.setValue(self.seed_spin.value() + 1)
        self.run()

    def run(self) -> None:
        if self.job is not None:
            self._pending = True  # the newest boxes run when this job ends
            return
        self.start_prepared(self.prepare, "Making the lesion ...")

    def job_finished(self) -> None:
        super().job_finished()
        if self._pending and self.job is None:
            self._pending = False
            self.run()

    def prepare(self):
        from medloop.plugins.lesions.blend import crop_side
        from medloop.plugins.lesions.checks import LesionInputError, check_box, check_image_2d
        from medloop.plugins.lesions.synthesize import SynthesisParams, synthesize_lesions

        image_layer, shapes = self.image_layer(), self.layer_named(self.boxes_combo)
        if image_layer is None:
            raise LesionInputError("open a healthy 2-D image first")
        if shapes is None:
            raise LesionInputError("make a box layer ('New box layer') and draw a rectangle")
        source = check_image_2d(np.asarray(image_layer.data), image_layer.name)
        boxes = [check_box(b, source.shape, f"box {i + 1}") for i, b in enumerate(boxes_in_pixels(shapes, image_layer))]
        if not boxes:
            raise LesionInputError(f"no rectangle in {shapes.name}; draw one around where the lesion should appear")
        translator_name = self.translator_combo.currentText()
        if not translator_name:
            raise LesionInputError("no translator loaded; choose a lesion translator model first")
        scorer_name = self.filter_combo.currentText()
        params = SynthesisParams(s=int(self.scale_combo.currentText()), n=self.n_spin.value(), seed=self.seed_spin.value(),
                                 threshold=self.t_spin.value() if scorer_name != NO_FILTER else None,
                                 allow_no_bone=self.no_bone_check.isChecked()).checked()
        for i, box in enumerate(boxes):  # the crop must fit the image: say so before any work starts
            if crop_side(box, params.s) > min(source.shape):
                raise LesionInputError(
                    f"the crop for box {i + 1} {box} at s={params.s} needs {crop_side(box, params.s)} px but the image is "
                    f"{source.shape[0]}x{source.shape[1]}; draw a smaller box or use s=1")
        raw = np.asarray(image_layer.data)
        grid, name, with_mask = _grid(image_layer), image_layer.name, self.mask_check.isChecked()

        def compute(progress, should_stop):
            translator = self.model(translator_name, "translator").translator()
            scorer = self.model(scorer_name, "classifier").scorer() if scorer_name != NO_FILTER else None
            return synthesize_lesions(raw, boxes, translator, params, scorer, name=name)

        def done(result) -> None:
            self._show(result, image_layer, grid, name, with_mask)

        return compute, done

    def _show(self, result, image_layer, grid: dict[str, Any], name: str, with_mask: bool) -> None:
        style = {"colormap": image_layer.colormap.name, "contrast_limits": tuple(image_layer.contrast_limits)}
        layer = self.put_layer(f"{name}_lesion", result.image, "image", grid, **style)
        layer.metadata["medloop_provenance"] = result.provenance
        layer.visible = True
        if with_mask:  # in the next turn of the event loop: adding a layer costs napari ~70 ms
            QTimer.singleShot(0, lambda: self._show_mask(result, grid, name))
        score = ""
        if result.score is not None:
            verdict = "" if result.kept is None else (" — kept" if result.kept else " — below t, not kept")
            score = f"; filter score {result.score:.3f}{verdict}"
        self.status.setText(f"{len(result.boxes)} lesion(s) in {name}_lesion (seed {result.provenance['params']['seed']}, "
                            f"{result.provenance['seconds']:.2f} s){score}.")

    def _show_mask(self, result, grid: dict[str, Any], name: str) -> None:
        mask = self.put_layer(f"{name}_lesion_mask", result.pseudo_mask, "labels", grid, opacity=0.5,
                              **class_layer_kwargs(LESION_CLASSES))
        mask.metadata["derived"] = True
        mask.metadata["medloop_provenance"] = result.provenance
        mask.visible = True

    # -- batch --------------------------------------------------------------------------------
    def choose_batch(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of healthy 2-D images")
        if not folder:
            return
        boxes, _ = QFileDialog.getOpenFileName(self, "Boxes CSV (source,y0,x0,y1,x1)", folder, "CSV (*.csv)")
        out = QFileDialog.getExistingDirectory(self, "Output folder") if boxes else ""
        if boxes and out:
            self.run_batch(folder, boxes, out)

    def run_batch(self, folder: str | Path, boxes_csv: str | Path, out_dir: str | Path) -> None:
        """Synthesise lesions into every image of ``folder`` (boxes from the CSV) → ``out_dir``."""
        from medloop.plugins.lesions.apply import SynthesizeFileSettings, augment_folder

        scorer = self.filter_combo.currentText()
        settings = SynthesizeFileSettings(
            self.translator_combo.currentText(), self.seed_spin.value(), int(self.scale_combo.currentText()),
            self.n_spin.value(), self.t_spin.value() if scorer != NO_FILTER else None,
            scorer if scorer != NO_FILTER else None, self.no_bone_check.isChecked())
        with_masks = self.mask_check.isChecked()

        def compute(progress, should_stop):
            return augment_folder(folder, boxes_csv, out_dir, settings, with_masks, progress, should_stop)

        def done(rows) -> None:
            images = {r.source: r.kept for r in rows}
            kept = sum(1 for k in images.values() if k is not False)
            self.status.setText(f"{len(images)} image(s), {len(rows)} lesion(s): {kept} image(s) kept and written to "
                                f"{out_dir}; see manifest.csv there.")

        self.status.setText("Synthesising the folder ...")
        self.start(compute, done)


class AnomalyMapPanel(_LesionPanel):
    """Baur et al.'s residual map r = median(max(x − x̂, 0)) with a live threshold."""

    def __init__(self, napari_viewer: "napari.Viewer") -> None:
        super().__init__(napari_viewer)
        from medloop.plugins.lesions.zoo import list_lesion_models

        self.mask_combo = QComboBox()
        self.reference_combo = QComboBox()
        self.model_combo = QComboBox()
        self.model_combo.addItems([c.name for c in list_lesion_models("anomaly")])
        self.median_combo = QComboBox()
        self.median_combo.addItems([OVER_SLICES, PER_SLICE])
        self.median_combo.setToolTip("For a stack: the paper's 5 × 5 × 5 median over a volume, or 5 × 5 within each "
                                     "slice when the slices are unrelated images")
        self.t_spin = _double(0.0, 1.0, 0.05, 0.001, 4)
        self.t_slider = QSlider(Qt.Orientation.Horizontal)
        self.t_slider.setRange(0, SLIDER_STEPS)
        self.t_slider.valueChanged.connect(lambda v: self.t_spin.setValue(v * SLIDER_MAX_T / SLIDER_STEPS))
        self.t_spin.valueChanged.connect(self._threshold_changed)
        self.model_combo.currentTextChanged.connect(self._model_changed)
        self.run_button = QPushButton("Compute map")
        self.run_button.clicked.connect(self.run)
        self.calibrate_button = QPushButton("Calibrate t")
        self.calibrate_button.clicked.connect(self.calibrate)
        self.send_button = QPushButton("Send to Correction")
        self.send_button.clicked.connect(self.send_to_correction)
        self.batch_button = QPushButton("Pseudo-label folder ...")
        self.batch_button.clicked.connect(self.choose_batch)
        self.start_buttons += [self.run_button, self.batch_button]
        self.residual: np.ndarray | None = None
        self._source: Any = None
        for label, widget in (("Image (in [0, 1])", self.image_combo), ("Brain mask", self.mask_combo),
                              ("Model", self.model_combo), ("Median (stacks)", self.median_combo),
                              ("Threshold t", self.t_spin), ("", self.t_slider),
                              ("Reference labels (calibrate)", self.reference_combo)):
            self.form.addRow(label, widget)
        self._model_changed()
        self._finish_layout(
            "An autoencoder trained on healthy images only reconstructs a healthy version; what it cannot explain "
            "(brighter than the reconstruction) is the residual r. Labels are r ≥ t: move t without re-running the model.",
            [self.run_button, self.calibrate_button, self.send_button, self.batch_button])
        self.preload([(self.model_combo.currentText(), "anomaly")], READY_MAP)

    def refresh_layers(self, *_: Any) -> None:
        super().refresh_layers()
        for combo, first in ((self.mask_combo, IMAGE_MASK), (self.reference_combo, "")):
            current = combo.currentText()
            names = [first] + [layer.name for layer in self.viewer.layers if layer._type_string == "labels"
                               and not layer.name.endswith("_anomaly_labels")]
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)

    def _model_changed(self, *_: Any) -> None:
        from medloop.plugins.lesions.zoo import find_lesion_model

        name = self.model_combo.currentText()
        if name:  # the calibrated t is in the card: no weights are read here
            self.t_spin.setValue(float(find_lesion_model(name, "anomaly").raw["inference"]["threshold"]))

    def _threshold_changed(self, t: float) -> None:
        self.t_slider.blockSignals(True)
        self.t_slider.setValue(int(round(min(t, SLIDER_MAX_T) / SLIDER_MAX_T * SLIDER_STEPS)))
        self.t_slider.blockSignals(False)
        self.update_labels()

    def run(self) -> None:
        self.start_prepared(self.prepare, "Reconstructing ...")

    def prepare(self):
        from medloop.plugins.lesions.checks import LesionInputError, check_mask, check_normalised

        layer = self.image_layer()
        if layer is None:
            raise LesionInputError("open an image (2-D, or a stack of axial slices) first")
        image = np.asarray(layer.data, dtype=np.float32)
        check_normalised(image, layer.name)
        mask_layer = self.layer_named(self.mask_combo)
        mask = None if mask_layer is None else check_mask(np.asarray(mask_layer.data), image.shape, mask_layer.name)
        name = self.model_combo.currentText()
        if not name:
            raise LesionInputError("no anomaly model; train one with medloop lesions train --recipe lesion-anomaly-brain")
        grid, image_name = _grid(layer), layer.name
        per_slice = self.median_combo.currentText() == PER_SLICE

        def compute(progress, should_stop):
            return self.model(name, "anomaly").anomaly_map(image, mask, name=image_name, per_slice=per_slice)

        def done(residual: np.ndarray) -> None:
            self.residual, self._source = residual, layer
            # Black (nothing added) up to the median residual inside the brain, so the overlay
            # lights up what the model could not explain instead of tinting the whole brain.
            inside = residual[(mask if mask is not None else image > 0)]
            low = float(np.median(inside)) if inside.size else 0.0
            overlay = self.put_layer(f"{image_name}_anomaly", residual, "image", grid, colormap="inferno",
                                     blending="additive", opacity=0.6,
                                     contrast_limits=(low, max(float(residual.max()), low + 1e-6)))
            overlay.metadata["medloop_provenance"] = {"method": "baur-ae-residual", "model": name}
            QTimer.singleShot(0, self.update_labels)  # a second new layer: in the next turn of the event loop
            self.status.setText(f"Residual map of {image_name}: max {residual.max():.3f}; labels at t = {self.t_spin.value():.4f}.")

        return compute, done

    def labels_name(self) -> str | None:
        return None if self._source is None else f"{self._source.name}_anomaly_labels"

    def update_labels(self) -> None:
        """Labels r >= t from the stored residual (no model run)."""
        if self.residual is None or self._source is None:
            return
        labels = (self.residual >= self.t_spin.value()).astype(np.uint8)
        layer = self.put_layer(self.labels_name(), labels, "labels", _grid(self._source), opacity=0.6,
                               **class_layer_kwargs(LESION_CLASSES))
        layer.metadata["derived"] = True
        layer.metadata["threshold"] = self.t_spin.value()

    def calibrate(self) -> None:
        """t maximising Dice between r >= t and the reference labels layer (in the brain mask)."""
        from medloop.plugins.lesions.residual import calibrate_threshold

        reference = self.layer_named(self.reference_combo)
        if self.residual is None or reference is None:
            self.status.setText("Cannot calibrate: compute the map and choose a reference labels layer first.")
            return
        truth = np.asarray(reference.data) != 0
        if truth.shape != self.residual.shape or not truth.any():
            self.status.setText(f"Cannot calibrate: {reference.name} must be a non-empty mask of shape {self.residual.shape}.")
            return
        t, dice = calibrate_threshold([self.residual], [truth])
        self.t_spin.setValue(t)
        self.status.setText(f"Calibrated t = {t:.4f} on {reference.name}: Dice {dice:.3f}.")

    def send_to_correction(self) -> None:
        """The labels (lesion, class 1) with a 3-px background ring (class 0) become the starting
        annotation of the Correction panel for this image (autosaved; Correction restores it)."""
        from medloop.app.io.autosave import annotation_layer_name
        from medloop.plugins.lesions.handoff import pseudo_label_annotation, save_correction_annotation

        name = self.labels_name()
        if name is None or name not in self.viewer.layers:
            self.status.setText("Nothing to send: compute the map first.")
            return
        mask_layer = self.layer_named(self.mask_combo)
        within = np.asarray(mask_layer.data) if mask_layer is not None else np.asarray(self._source.data) > 0
        try:
            annotation = pseudo_label_annotation(np.asarray(self.viewer.layers[name].data), within=within)
            path = save_correction_annotation(layer_image(self._source), self._source.name, annotation)
        except (MedloopError, ValueError) as exc:
            self.refuse(exc)
            return
        target = annotation_layer_name(self._source.name)
        if target in self.viewer.layers:  # Correction's layer is open: it autosaves its own edits from here
            self.viewer.layers[target].data = annotation
            where = f"into the open layer '{target}'"
        else:
            where = f"(saved in {path.parent}); in Correction choose {self._source.name} and press 'New / restore annotation layer'"
        lesion = int((annotation == 2).sum())
        self.status.setText(f"Sent {lesion} lesion px with a background ring as the Correction annotation {where}. "
                            "Correct them there, then fine-tune a two-class (background / lesion) model.")

    def choose_batch(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of images in [0, 1]")
        out = QFileDialog.getExistingDirectory(self, "Output folder") if folder else ""
        if folder and out:
            self.run_batch(folder, out)

    def run_batch(self, folder: str | Path, out_dir: str | Path) -> None:
        """Pseudo-labels (and residual maps) for every image of ``folder`` → ``out_dir``."""
        from medloop.plugins.lesions.pseudolabels import run_pseudolabel_folder

        model, t = self.model_combo.currentText(), self.t_spin.value()

        def compute(progress, should_stop):
            return run_pseudolabel_folder(folder, out_dir, model, t, progress, should_stop=should_stop)

        def done(report) -> None:
            self.status.setText(report.summary())

        self.status.setText("Pseudo-labelling the folder ...")
        self.start(compute, done)


def _double(lo: float, hi: float, value: float, step: float, decimals: int) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(lo, hi)
    spin.setDecimals(decimals)
    spin.setSingleStep(step)
    spin.setValue(value)
    return spin
