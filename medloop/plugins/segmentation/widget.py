"""Segmentation panel: pick an image layer and a model, Run (off the GUI thread), Cancel; train a
segment-then-segment cascade from the image and a labels layer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton,
    QSpinBox, QVBoxLayout,
)

from medloop.app.errors import MedloopError
from medloop.app.gui.layers import class_layer_kwargs, layer_image, style_labels
from medloop.app.gui.panel import Fold, MethodPanel

if TYPE_CHECKING:
    import napari

def _warm_up_compute_imports() -> None:
    """Import the compute stack when the panel opens: an import holds the interpreter lock, so
    doing it inside the first job would freeze the GUI for a second at the first Run."""
    import SimpleITK  # noqa: F401
    from napari.layers import Labels

    import medloop.app.engine.resample  # noqa: F401
    import medloop.app.engine.tiling  # noqa: F401
    import medloop.models.nets.unet  # noqa: F401
    import medloop.plugins.segmentation.method  # noqa: F401

    Labels(np.zeros((1, 1), np.uint8))  # napari builds its label colour tables on first use


class SegmentationPanel(MethodPanel):
    """Runs :func:`medloop.plugins.segmentation.method.segment` on the chosen layer."""

    def __init__(self, napari_viewer: "napari.Viewer") -> None:
        super().__init__(napari_viewer)
        self.last_result = None
        self._build_run_controls()
        self._build_train_controls()
        self._build_layout()
        self._fill_models()
        self._fill_devices()
        self.refresh_layers()
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self.image_combo.currentTextChanged.connect(self._explain_cascade_training)
        self.run_button.clicked.connect(self.run)
        self.train_button.clicked.connect(self.train_cascade)
        self._model_changed()
        _warm_up_compute_imports()

    def _build_run_controls(self) -> None:
        """Model, device, tiles, upscaling, cascade refinement and the Run button."""
        self.model_combo = QComboBox()
        self.model_info = QLabel()
        self.model_info.setWordWrap(True)
        self.device_combo = QComboBox()
        self.precision_combo = QComboBox()
        self.precision_combo.addItems(["auto", "fp32", "bf16"])
        self.precision_combo.setToolTip(
            "auto: bf16 where this CPU/GPU runs it natively and the model's test input keeps >= 99.9 % of its labels "
            "(checked once per model and machine); fp32: exact; bf16: always reduced precision")
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(16, 4096)
        self.overlap_spin = QDoubleSpinBox()
        self.overlap_spin.setRange(0.0, 0.9)
        self.overlap_spin.setSingleStep(0.05)
        self.probabilities_check = QCheckBox("Also show class probabilities")
        # Seed 000: output k times finer per axis (z, y, x) from sub-voxel shifted inputs.
        self.upscale_spins = {}
        for axis in ("z", "y", "x"):
            spin = QSpinBox()
            spin.setRange(1, 8)
            spin.setPrefix(f"{axis} ×")
            spin.setToolTip(f"Output {axis} resolution factor: segments sub-voxel shifted copies and interleaves them")
            self.upscale_spins[axis] = spin
        self.fusion_combo = QComboBox()
        self.fusion_combo.addItems(["no overlap", "overlap, mean", "overlap, vote"])
        self.fusion_combo.setToolTip("Predict every fine voxel from both neighbouring voxels (2x passes) and fuse")
        # Seed 002: a fine model re-segments a crop around every object the (coarse) model found.
        self.cascade_combo = QComboBox()
        self.cascade_combo.setToolTip(
            "Segment-then-segment: the chosen model finds objects on the downscaled image, this model "
            "segments a crop around each one at full resolution"
        )
        self.run_button = QPushButton("Run")
        self.start_buttons.append(self.run_button)

    def _build_train_controls(self) -> None:
        """Training a cascade from what the annotator labelled: coarse from the chosen model, fine from coarse."""
        self.train_labels_combo = QComboBox()
        self.train_labels_combo.setToolTip("The labels layer with the objects of the chosen image (same grid)")
        self.train_size_spin = QSpinBox()
        self.train_size_spin.setRange(16, 1024)
        self.train_size_spin.setSingleStep(16)
        self.train_size_spin.setValue(128)
        self.train_size_spin.setToolTip("Input size S: the coarse model sees the whole image resized to S x S, the fine model each crop")
        self.train_epochs_spin = QSpinBox()
        self.train_epochs_spin.setRange(1, 500)
        self.train_epochs_spin.setValue(20)
        self.train_button = QPushButton("Train cascade")
        self.train_button.setToolTip(
            "Train a coarse model (from the chosen model's weights) and a fine model (from the coarse one) on the "
            "image and labels, register both and select them"
        )
        self.start_buttons.append(self.train_button)
        self.train_hint = QLabel("")
        self.train_hint.setWordWrap(True)
        self.train_hint.setVisible(False)

    def _build_layout(self) -> None:
        """The run form, the Run/Cancel buttons, the training box, progress and status."""
        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("", self.model_info)
        form.addRow("Device", self.device_combo)
        # Advanced options fold away: tiles, output resolution, segment-then-segment.
        self.advanced = Fold("Tiles and output resolution")
        self.advanced.addRow("Tile (voxels)", self.tile_spin)
        self.advanced.addRow("Overlap", self.overlap_spin)
        self.advanced.addRow("Precision", self.precision_combo)
        upscale_row = QHBoxLayout()
        for spin in self.upscale_spins.values():
            upscale_row.addWidget(spin)
        self.advanced.addRow("Upscale output", upscale_row)
        self.advanced.addRow("Upscale fusion", self.fusion_combo)
        self.cascade_fold = Fold("Segment-then-segment (cascade)")
        self.cascade_fold.addRow("Refine crops with", self.cascade_combo)
        train_box = QGroupBox("Train a cascade on this image")
        train_form = QFormLayout(train_box)
        train_form.addRow("Labels", self.train_labels_combo)
        train_form.addRow("Input size S", self.train_size_spin)
        train_form.addRow("Epochs", self.train_epochs_spin)
        train_form.addRow("", self.train_button)
        train_form.addRow(self.train_hint)
        self.cascade_fold.addRow(train_box)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.advanced)
        layout.addWidget(self.cascade_fold)
        layout.addWidget(self.probabilities_check)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.make_scrollable()

    # -- inputs -------------------------------------------------------------------------------
    def refresh_layers(self, *_: Any) -> None:
        super().refresh_layers()
        if hasattr(self, "train_labels_combo"):  # the base class calls this before the panel is built
            self.offer_layers(self.train_labels_combo, "labels")

    def _fill_models(self, select: str | None = None, refine: str | None = None) -> None:
        from medloop.models.registry import list_models

        current, current_refine = select or self.model_combo.currentText(), refine or self.cascade_combo.currentText()
        self.models = list_models()
        self.model_combo.clear()
        self.model_combo.addItems([m.name for m in self.models])
        # Any model can refine crops (at the coarse model's input size unless it has its own);
        # segment() checks that both fit the image.
        self.cascade_combo.clear()
        self.cascade_combo.addItems(["(no cascade)"] + [m.name for m in self.models])
        if current:
            self.model_combo.setCurrentText(current)
        if current_refine:
            self.cascade_combo.setCurrentText(current_refine)

    def _fill_devices(self) -> None:
        from medloop.app.engine.devices import available_devices

        self.device_combo.addItems(["auto", *available_devices()])

    def _model_changed(self, *_: Any) -> None:
        entry = self.current_model()
        if entry is None:
            self.model_info.setText("No models installed.")
            self.run_button.setEnabled(False)
            return
        self.run_button.setEnabled(self.job is None)
        card = entry.card
        roi = card.inference.get("roi_size") or [128]
        self.tile_spin.setValue(int(roi[0]))
        self.overlap_spin.setValue(float(card.inference.get("overlap", 0.25)))
        spacing = card.spacing
        self.model_info.setText(
            f"{card.description.split('. ')[0]}. Classes: {', '.join(card.classes.values())}."
            + (f" Runs at {' x '.join(f'{s:g}' for s in spacing)} mm." if spacing else "")
        )
        self._explain_cascade_training()

    def cascade_training_problem(self) -> str | None:
        """Why a cascade cannot be trained from the chosen model on the chosen image (None: it can).
        Segment-then-segment resizes the whole image to S: the model must have the image's
        dimensionality (a 2-D model run slice by slice cannot be a volume's coarse model)."""
        entry, layer = self.current_model(), self.image_layer()
        if entry is None or layer is None:
            return None
        try:
            ndim = layer_image(layer).ndim
        except MedloopError:
            return None
        dims = entry.card.spatial_dims
        if dims == ndim:
            return None
        fitting = [m.name for m in self.models if m.card.spatial_dims == ndim]
        return (
            f"A cascade resizes the whole {ndim}-D image to S, so it starts from a {ndim}-D model; "
            f"{entry.name} is {dims}-D. " + (f"Pick {', '.join(fitting)}." if fitting else f"No {ndim}-D model is installed.")
        )

    def _explain_cascade_training(self, *_: Any) -> None:
        reason = self.cascade_training_problem()
        self.train_button.setEnabled(reason is None and self.job is None)
        self.train_hint.setText(reason or "")
        self.train_hint.setVisible(reason is not None)

    def job_finished(self) -> None:
        self._explain_cascade_training()  # the job's end re-enabled the start buttons

    def current_model(self):
        i = self.model_combo.currentIndex()
        return self.models[i] if 0 <= i < len(self.models) else None

    # -- running ------------------------------------------------------------------------------
    def run(self) -> None:
        """Start segmentation of the chosen layer; inputs are checked before any work starts."""
        from napari.utils.notifications import show_error

        from medloop.plugins.segmentation.method import SegmentParams, check_input, segment

        name, entry = self.image_combo.currentText(), self.current_model()
        if not name or entry is None:
            show_error("choose an image layer and a model first")
            return
        layer = self.viewer.layers[name]
        try:
            image = layer_image(layer)
            check_input(image, entry.card)
        except MedloopError as exc:
            show_error(str(exc))
            return
        params = SegmentParams(
            model=entry.name,
            device=self.device_combo.currentText(),
            roi_size=(self.tile_spin.value(),) * entry.card.spatial_dims,
            overlap=self.overlap_spin.value(),
            probabilities=self.probabilities_check.isChecked(),
            models_dir=None if entry.packaged else entry.folder.parent,
            upscale=self.upscale_factors(image.ndim),
            upscale_overlap=self.fusion_combo.currentIndex() > 0,
            upscale_fusion="vote" if self.fusion_combo.currentIndex() == 2 else "mean",
            cascade=None if self.cascade_combo.currentIndex() <= 0 else self.cascade_combo.currentText(),
            precision=self.precision_combo.currentText(),
        )
        self.status.setText(f"Segmenting {name} with {entry.name} ...")
        self.start(
            lambda progress, should_stop: segment(image, params, progress, should_stop),
            lambda result: self._show_result(name, result),
        )

    def train_cascade(self) -> None:
        """Train a cascade (seed 002) on the chosen image and labels layer, off the GUI thread;
        on success both models are registered and selected ("Model" and "Refine crops with")."""
        from napari.utils.notifications import show_error

        from medloop.plugins.segmentation.cascade_training import CascadeTrainParams, train_cascade

        name, labels_name, entry = self.image_combo.currentText(), self.train_labels_combo.currentText(), self.current_model()
        if not name or not labels_name or entry is None:
            show_error("choose an image layer, its labels layer and a model to start from")
            return
        try:
            image = layer_image(self.viewer.layers[name])
            mask = layer_image(self.viewer.layers[labels_name])
            mask = mask.with_array(np.array(mask.array))  # a snapshot: painting goes on during training
        except MedloopError as exc:
            show_error(str(exc))
            return
        pairs = [(image, mask, f"image layer {name!r}", f"labels layer {labels_name!r}")]
        size, epochs = self.train_size_spin.value(), self.train_epochs_spin.value()
        models_dir = None if entry.packaged else entry.folder.parent
        self.status.setText(f"Training a cascade from {entry.name} on {name} ...")
        self.start(
            lambda progress, should_stop: train_cascade(
                entry.name, pairs, CascadeTrainParams(size, epochs=epochs), models_dir=models_dir,
                progress=progress, should_stop=should_stop,
            ),
            self._cascade_trained,
        )

    def _cascade_trained(self, names: tuple[str, str]) -> None:
        coarse, fine = names
        self._fill_models(select=coarse, refine=fine)
        self.status.setText(f"Trained {coarse} (coarse) and {fine} (fine) and selected them; Run segments with the cascade.")

    def upscale_factors(self, ndim: int) -> tuple[int, ...]:
        """The factors per array axis of an ``ndim``-D image (z, y, x or y, x)."""
        return tuple(spin.value() for spin in list(self.upscale_spins.values())[-ndim:])

    def _show_result(self, image_name: str, result) -> None:
        """Create the result layers, or update them in place on a re-run."""
        self.last_result = result
        prov = result.provenance
        labels_name = f"{image_name} {prov['model']}" + (f"+{prov['cascade']['fine']['model']}" if "cascade" in prov else "")
        # Every result layer sits on the grid of its own data (an upscaled run is finer than the input).
        kwargs = result.labels.layer_kwargs()
        metadata = {"medloop_image": result.labels, "provenance": prov}
        if labels_name in self.viewer.layers:
            layer = self.viewer.layers[labels_name]
            layer.data = result.labels.array
            _set_grid(layer, kwargs)
            layer.metadata.update(metadata)
            style_labels(layer, prov["classes"])
        else:
            style = class_layer_kwargs(prov["classes"])
            style["metadata"].update(metadata)
            self.viewer.add_labels(result.labels.array, name=labels_name, opacity=0.5, **style, **kwargs)
        if result.probabilities is not None:
            probs = np.moveaxis(np.asarray(result.probabilities.array), -1, 0)
            pkwargs = {k: v for k, v in result.probabilities.layer_kwargs().items() if k not in ("rgb", "multiscale")}
            for k, cls in prov["classes"].items():
                if k == 0:
                    continue
                pname = f"{image_name} p({cls})"
                if pname in self.viewer.layers:
                    self.viewer.layers[pname].data = probs[k]
                    _set_grid(self.viewer.layers[pname], pkwargs)
                else:
                    self.viewer.add_image(probs[k], name=pname, colormap="magma", opacity=0.6,
                                          contrast_limits=(0, 1), visible=False, **pkwargs)
        extra = ""
        if "cascade" in prov:
            extra = f" Refined {prov['cascade']['crops']} crops with {prov['cascade']['fine']['model']}."
        if "upscale" in prov:
            extra = f" Upscaled {' x '.join(str(k) for k in prov['upscale']['factors'])} from {prov['upscale']['copies']} shifted copies."
        self.status.setText(f"Done in {prov['seconds']} s on {prov['device']}.{extra}")


def _set_grid(layer, kwargs: dict[str, Any]) -> None:
    """Move an existing layer onto the grid ``kwargs`` (a MedImage's layer_kwargs) describe."""
    for key in ("scale", "translate", "affine", "units"):
        if key in kwargs:
            setattr(layer, key, kwargs[key])
