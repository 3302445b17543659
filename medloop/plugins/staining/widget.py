"""Staining panels: *Stain transfer* (an RGB layer or an open slide + level through a CycleGAN),
*Confocal to H&E* (Gareau rendering of FCM + RCM) and *Normalise stain* (Macenko / Reinhard to a
reference rectangle drawn in a Shapes layer).

Every run is a worker with progress and Cancel; bad inputs (spec §5) show one line in the
status line before any compute, and the panel stays up. All compute is in :mod:`.apply` and the
method modules; this file only reads layers and adds results.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import (
    QCheckBox, QColorDialog, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
    QPushButton, QSizePolicy, QSlider, QSpinBox, QVBoxLayout, QWidget,
)

from medloop.app.errors import MedloopError
from medloop.app.gui.panel import MethodPanel

if TYPE_CHECKING:
    import napari

TILE_CHOICES = {"CPU 512 / 256 / 128": (512, 256, 128), "paper 2048 / 1024 / 512": (2048, 1024, 512)}
#: Arrays above this many pixels are written to a tiled TIFF and opened lazily (spec §5: 1 GP).
MEMORY_CAP_PX = 1_000_000_000


def _warm_up() -> None:
    """Import torch and the models on the GUI thread once, when a panel opens: an import holds
    the interpreter lock, so doing it inside the first job would freeze the window."""
    import medloop.app.engine.tiling  # noqa: F401
    import medloop.plugins.staining.apply  # noqa: F401
    import medloop.plugins.staining.zoo  # noqa: F401


class _StainPanel(MethodPanel):
    """The shared frame: a form, a Run button, progress + Cancel and the status line."""

    run_text = "Run"

    def __init__(self, napari_viewer: "napari.Viewer") -> None:
        super().__init__(napari_viewer)
        _warm_up()
        self.form = QFormLayout()
        self.run_button = QPushButton(self.run_text)
        self.run_button.clicked.connect(self.run)
        self.start_buttons.append(self.run_button)
        self.last_result: Any = None

    def _finish_layout(self, help_text: str) -> None:
        layout = QVBoxLayout(self)
        intro = QLabel(help_text)
        intro.setWordWrap(True)
        layout.addWidget(intro)
        layout.addLayout(self.form)
        layout.addWidget(self.run_button)
        row = QHBoxLayout()
        row.addWidget(self.progress)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        layout.addWidget(self.status)
        self._add_extra(layout)
        layout.addStretch(1)
        self.make_scrollable()
        self.refresh_layers()

    def _add_extra(self, layout: QVBoxLayout) -> None:
        """Widgets below the status line (subclasses)."""

    def run(self) -> None:
        self.start_prepared(self.prepare, "Running ...")

    def prepare(self):  # -> (compute(progress, should_stop), on_done(result))
        raise NotImplementedError

    def layer(self, combo: QComboBox):
        name = combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None


def _spatial(layer, axes: slice) -> dict[str, Any]:
    """scale / translate / units of ``layer``'s spatial axes, for a result on the same grid."""
    units = getattr(layer, "units", None)
    out = {"scale": tuple(layer.scale)[axes], "translate": tuple(layer.translate)[axes]}
    if units is not None:
        out["units"] = tuple(str(u) for u in tuple(units)[axes])
    return out


class StainTransferPanel(_StainPanel):
    """Stain transfer through a packaged (or trained) CycleGAN, tiled seam-free."""

    run_text = "Translate"

    def __init__(self, napari_viewer: "napari.Viewer", out_dir: str | Path | None = None) -> None:
        super().__init__(napari_viewer)
        self.out_dir = Path(out_dir) if out_dir else Path(tempfile.gettempdir()) / "medloop-stain"
        self.level_spin = QSpinBox()
        self.model_combo = QComboBox()
        self.direction_combo = QComboBox()
        self.tile_combo = QComboBox()
        for label, tile in TILE_CHOICES.items():
            self.tile_combo.addItem(label, tile)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        self._models: dict[str, Any] = {}
        self.domains_label = QLabel("")
        self.domains_label.setWordWrap(True)
        self._fill_models()
        if self.model_combo.currentText():
            self.generator(self.model_combo.currentText(), "A->B")  # while the panel opens, not at the first run
        self.model_combo.currentTextChanged.connect(self._fill_directions)
        self.image_combo.currentTextChanged.connect(self._image_changed)
        for label, widget in (("RGB image or slide", self.image_combo), ("Slide level", self.level_spin),
                              ("Model", self.model_combo), ("Domains", self.domains_label), ("Direction", self.direction_combo),
                              ("Tiles in / keep / stride", self.tile_combo), ("Device", self.device_combo)):
            self.form.addRow(label, widget)
        self._finish_layout("Translate an RGB image, or a whole slide opened in medloop, to another stain. "
                            "Slides are written to a tiled TIFF and opened lazily.")

    def _add_extra(self, layout: QVBoxLayout) -> None:
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(100)
        self.opacity.valueChanged.connect(self._set_opacity)
        self.before_after = QCheckBox("Show result (untick to see the input)")
        self.before_after.setChecked(True)
        self.before_after.toggled.connect(self._set_visible)
        row = QHBoxLayout()
        row.addWidget(QLabel("Result opacity"))
        row.addWidget(self.opacity)
        layout.addLayout(row)
        layout.addWidget(self.before_after)
        self.result_layer = None
        self._enable_result_controls()

    def _fill_models(self) -> None:
        """The packaged stain-transfer models, then every version the user trained
        (``<user models dir>/stain-models/<name>/v<N>``, listed as "<name> v<N>")."""
        from medloop.plugins.staining.user_models import list_user_models
        from medloop.plugins.staining.zoo import find_stain_model, list_stain_models

        self.cards = {c.name: c for c in list_stain_models() if c.raw.get("kind") == "stain-transfer"}
        self.model_paths: dict[str, Path] = {}
        for name, version, folder in list_user_models():
            try:
                card = find_stain_model(folder)
            except MedloopError:
                continue  # a damaged folder is not offered
            if card.raw.get("kind") == "stain-transfer":
                label = f"{name} v{version}"
                self.cards[label], self.model_paths[label] = card, folder
        self.model_combo.addItems(list(self.cards))
        self._fill_directions()

    def refresh_models(self, select: str | None = None) -> None:
        """Re-read the model list (after a training run); keep or ``select`` a model."""
        current = select or self.model_combo.currentText()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self._fill_models()
        if current in self.cards:
            self.model_combo.setCurrentText(current)
        self.model_combo.blockSignals(False)
        self._fill_directions()

    def _fill_directions(self, *_: Any) -> None:
        card = self.cards.get(self.model_combo.currentText())
        domains = card.raw.get("domains", {}) if card else {}
        a, b = (domains.get(k, {}).get("name", k) for k in ("A", "B"))
        self.direction_combo.clear()  # short items: the domain names go in the line below (no clipped text)
        self.direction_combo.addItem("A → B", "A->B")
        self.direction_combo.addItem("B → A", "B->A")
        self.domains_label.setText(f"A = {a}, B = {b}" if card else "")

    def refresh_layers(self, *_: Any) -> None:
        super().refresh_layers()
        if hasattr(self, "level_spin"):
            self._image_changed()

    def _image_changed(self, *_: Any) -> None:
        layer = self.image_layer()
        levels = len(layer.data) if layer is not None and layer.multiscale else 1
        self.level_spin.setMaximum(max(levels - 1, 0))
        self.level_spin.setEnabled(levels > 1)

    def _set_opacity(self, value: int) -> None:
        if self.result_layer is not None and self.result_layer in self.viewer.layers:
            self.result_layer.opacity = value / 100.0

    def _set_visible(self, on: bool) -> None:
        if self.result_layer is not None and self.result_layer in self.viewer.layers:
            self.result_layer.visible = on

    def _enable_result_controls(self) -> None:
        on = self.result_layer is not None
        self.opacity.setEnabled(on)
        self.before_after.setEnabled(on)

    def generator(self, model: str, direction: str) -> Any:
        """The model's generator, loaded once per panel (a load checks the sha256 and unpickles
        the weights: 100+ ms that must not recur on the GUI thread at every run)."""
        from medloop.plugins.staining import apply

        if model not in self._models:
            self._models[model] = apply.transfer_generator(self.model_paths.get(model, model), "A->B")[0]
        return self._models[model].generator(direction)

    def settings(self) -> dict[str, Any]:
        return {"model": self.model_combo.currentText(), "direction": self.direction_combo.currentData() or "A->B",
                "tile": tuple(self.tile_combo.currentData()), "device": self.device_combo.currentText(),
                "level": self.level_spin.value()}

    def prepare(self):
        from medloop.plugins.staining import apply

        layer = self.image_layer()
        if layer is None:
            raise MedloopError("open an RGB image or a slide first (File > Open)")
        s = self.settings()
        if not s["model"]:
            raise MedloopError("no stain-transfer model is installed; train one with 'medloop stain train'")
        shape = tuple(layer.data[0].shape if layer.multiscale else np.shape(layer.data))
        if len(shape) != 3 or shape[-1] not in (3, 4):
            raise MedloopError(f"layer {layer.name} has shape {shape}: expected an RGB image (3 channels last)")
        generator = self.generator(s["model"], s["direction"])
        tiling = apply.transfer_tiling(generator, s["tile"], s["device"])
        if layer.multiscale or shape[0] * shape[1] > MEMORY_CAP_PX:
            return self._prepare_slide(layer, generator, tiling, s)
        data = layer.data

        def compute(progress, should_stop):
            return apply.translate_rgb(np.asarray(data), generator, tiling, progress, should_stop, name=f"layer {layer.name}")

        return compute, lambda rgb: self._show_array(layer, rgb, s)

    def _prepare_slide(self, layer, generator, tiling, s: dict[str, Any]):
        from medloop.plugins.staining import apply

        image = self._slide_image(layer)
        level = apply.check_level(image, s["level"])
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tag = f"{s['model'].replace(' ', '_')}_{'a2b' if s['direction'] == 'A->B' else 'b2a'}_L{level}"
        out = self.out_dir / f"{layer.name}_{tag}.tif"

        def compute(progress, should_stop):
            return apply.translate_slide(image, level, generator, tiling, out, progress, should_stop)

        return compute, lambda path: self._show_slide(layer, Path(path), image, level, s)

    def _slide_image(self, layer):
        """The slide behind a multiscale layer (medloop's reader keeps it), or the layer as one."""
        from medloop.app.io.image import MedImage

        source = layer.metadata.get("medloop_image")
        if isinstance(source, MedImage):
            return source
        levels = list(layer.data) if layer.multiscale else [layer.data]
        spacing = tuple(float(v) for v in tuple(layer.scale)[-3:-1][::-1]) if len(layer.scale) >= 3 else (1.0, 1.0)
        downs = tuple(float(levels[0].shape[1]) / float(lv.shape[1]) for lv in levels)
        return MedImage.from_array(levels[0], spacing=spacing, unit="um", channel_axis=True,
                                   pyramid=tuple(levels) if len(levels) > 1 else (), metadata={"level_downsamples": downs})

    def _add_result(self, name: str, data: Any, kwargs: dict[str, Any], s: dict[str, Any]) -> None:
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)  # a re-run replaces its result
        self.result_layer = self.viewer.add_image(data, name=name, rgb=True, opacity=self.opacity.value() / 100.0, **kwargs)
        self.before_after.setChecked(True)
        self._enable_result_controls()

    def _show_array(self, layer, rgb: np.ndarray, s: dict[str, Any]) -> None:
        self.last_result = rgb
        self._add_result(f"{layer.name}_{s['model']}", rgb, _spatial(layer, slice(0, 2)), s)
        self.status.setText(f"Done: {rgb.shape[1]} x {rgb.shape[0]} px translated {s['direction'].replace('->', ' → ')} with {s['model']}.")

    def _show_slide(self, layer, path: Path, source, level: int, s: dict[str, Any]) -> None:
        from medloop.app.io.slide import read_slide

        image = read_slide(path)  # lazy: only the tiles on screen are ever read
        self.last_result = image
        kwargs = {k: v for k, v in image.layer_kwargs().items() if k not in ("rgb",)}
        d = float(source.metadata.get("level_downsamples", (1.0,) * (level + 1))[level])
        base = _spatial(layer, slice(0, 2))
        # a level-L pixel covers d x d level-0 pixels: its centre sits (d - 1) / 2 of them further
        kwargs["translate"] = tuple(t + (d - 1) / 2 * sc for t, sc in zip(base["translate"], base["scale"]))
        kwargs["metadata"] = {"medloop_image": image}
        self._add_result(f"{layer.name}_{s['model']}", image.layer_data(), kwargs, s)
        h, w = image.shape[:2]
        self.status.setText(f"Done: level {level} ({w} x {h} px) written to {path} and opened lazily.")


class ConfocalPanel(_StainPanel):
    """Confocal (FCM + RCM) to pseudo-H&E with the Gareau renderer, RCM optionally despeckled."""

    run_text = "Render pseudo-H&E"
    SAME = "(second channel of the same layer)"

    def __init__(self, napari_viewer: "napari.Viewer") -> None:
        from medloop.plugins.staining.confocal import E_COLOUR, H_COLOUR

        super().__init__(napari_viewer)
        self.rcm_combo = QComboBox()
        self.fcm_spin = QSpinBox()
        self.fcm_spin.setRange(0, 1)
        self.colours = {"h": tuple(H_COLOUR), "e": tuple(E_COLOUR)}
        self.colour_buttons = {k: QPushButton() for k in self.colours}
        for key, button in self.colour_buttons.items():
            button.clicked.connect(lambda _=False, k=key: self.pick_colour(k))
            self._paint(key)
        self.despeckle_box = QCheckBox("Despeckle RCM (packaged stain-despeckle-rcm)")
        for label, widget in (("FCM (or 2-channel) layer", self.image_combo), ("RCM layer", self.rcm_combo),
                              ("FCM channel", self.fcm_spin), ("Hematoxylin colour", self.colour_buttons["h"]),
                              ("Eosin colour", self.colour_buttons["e"]), ("", self.despeckle_box)):
            self.form.addRow(label, widget)
        self._finish_layout("Render a confocal image as pseudo-H&E: fluorescence (nuclei) as hematoxylin, "
                            "reflectance as eosin. Give one 2-channel layer, or two layers.")

    def refresh_layers(self, *_: Any) -> None:
        super().refresh_layers()
        if hasattr(self, "rcm_combo"):
            current = self.rcm_combo.currentText()
            self.rcm_combo.clear()
            self.rcm_combo.addItems([self.SAME] + [layer.name for layer in self.viewer.layers if layer._type_string == "image"])
            if current:
                self.rcm_combo.setCurrentText(current)

    def _paint(self, key: str) -> None:
        r, g, b = (int(round(v * 255)) for v in self.colours[key])
        self.colour_buttons[key].setText(f"#{r:02x}{g:02x}{b:02x}")
        text = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"
        self.colour_buttons[key].setStyleSheet(f"background-color: rgb({r},{g},{b}); color: {text};")

    def pick_colour(self, key: str) -> None:
        chosen = QColorDialog.getColor(QColor.fromRgbF(*self.colours[key]), self, f"{key.upper()} colour")
        if chosen.isValid():
            self.set_colour(key, (chosen.redF(), chosen.greenF(), chosen.blueF()))

    def set_colour(self, key: str, rgb: tuple[float, float, float]) -> None:
        self.colours[key] = tuple(float(v) for v in rgb)
        self._paint(key)

    def _inputs(self) -> tuple[np.ndarray, Any, slice]:
        """(FCM, RCM) stacked on a first axis, the layer the result sits on, its spatial axes."""
        fcm_layer = self.image_layer()
        if fcm_layer is None:
            raise MedloopError("open a confocal image first: one 2-channel layer, or an FCM and an RCM layer")
        rcm_name = self.rcm_combo.currentText()
        if rcm_name in ("", self.SAME):
            data = np.asarray(fcm_layer.data)
            first = data.ndim >= 3 and data.shape[0] == 2
            return data, fcm_layer, slice(1, None) if first else slice(0, -1)
        rcm_layer = self.viewer.layers[rcm_name]
        f, r = np.asarray(fcm_layer.data), np.asarray(rcm_layer.data)
        if f.shape != r.shape:
            raise MedloopError(f"layers {fcm_layer.name} {f.shape} and {rcm_layer.name} {r.shape} differ in shape; give co-registered images")
        return np.stack([f, r]), fcm_layer, slice(None)

    def prepare(self):
        from medloop.plugins.staining.confocal import ConfocalParams, confocal_to_rgb, split_confocal, to_uint8

        data, layer, axes = self._inputs()
        two_layers = axes == slice(None)
        fcm_index = 0 if two_layers else self.fcm_spin.value()
        params = ConfocalParams(h=self.colours["h"], e=self.colours["e"], channel_axis=0 if two_layers else None,
                                fcm_index=fcm_index, percentiles=(1.0, 99.0))
        split_confocal(data, params, f"layer {layer.name}")  # every §5 check, before the model or compute
        despeckle = self.despeckle_box.isChecked()

        def compute(progress, should_stop):
            fn = None
            if despeckle:
                from medloop.plugins.staining.zoo import load_stain_model

                model = load_stain_model("stain-despeckle-rcm")
                fn = model.despeckle
            progress(0, 1)
            rgb = to_uint8(confocal_to_rgb(data, params, fn, name=f"layer {layer.name}"))
            progress(1, 1)
            return rgb

        def done(rgb: np.ndarray) -> None:
            self.last_result = rgb
            name = f"{layer.name}_gareau"
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            self.viewer.add_image(rgb, name=name, rgb=True, **_spatial(layer, axes))
            self.status.setText(f"Done: {name} ({rgb.shape[1]} x {rgb.shape[0]} px).")

        return compute, done


class NormalisePanel(_StainPanel):
    """Macenko / Reinhard normalisation of an RGB layer to a reference rectangle the user draws."""

    run_text = "Normalise"
    REFERENCE = "stain reference"

    def __init__(self, napari_viewer: "napari.Viewer") -> None:
        super().__init__(napari_viewer)
        self.reference_combo = QComboBox()
        self.shapes_combo = QComboBox()
        self.method_combo = QComboBox()
        self.method_combo.addItems(["macenko", "reinhard"])
        self.draw_button = QPushButton("Draw reference rectangle")
        self.draw_button.clicked.connect(self.draw_reference)
        for label, widget in (("RGB image", self.image_combo), ("Reference image", self.reference_combo),
                              ("Reference region (Shapes)", self.shapes_combo), ("", self.draw_button),
                              ("Method", self.method_combo)):
            self.form.addRow(label, widget)
        self._finish_layout("Normalise an image's stain to a reference region: draw a rectangle over well-stained "
                            "tissue of the reference image, then Normalise.")

    def refresh_layers(self, *_: Any) -> None:
        super().refresh_layers()
        if hasattr(self, "shapes_combo"):
            self.offer_layers(self.reference_combo, "image")
            self.offer_layers(self.shapes_combo, "shapes")

    def draw_reference(self) -> None:
        """A Shapes layer in rectangle mode on the reference image's grid."""
        ref = self.layer(self.reference_combo) or self.image_layer()
        kwargs = _spatial(ref, slice(0, 2)) if ref is not None else {}
        shapes = self.viewer.add_shapes(name=self.REFERENCE, edge_color="#e69f00", face_color="transparent", edge_width=3, **kwargs)
        shapes.mode = "add_rectangle"
        self.shapes_combo.setCurrentText(shapes.name)
        self.status.setText("Drag a rectangle over stained tissue of the reference image.")

    def reference_region(self) -> np.ndarray:
        ref, shapes = self.layer(self.reference_combo), self.layer(self.shapes_combo)
        if ref is None:
            raise MedloopError("choose a reference image layer")
        if shapes is None or len(shapes.data) == 0:
            raise MedloopError("draw a reference rectangle first (Draw reference rectangle)")
        corners = np.asarray(shapes.data[-1])[:, -2:]
        world = np.asarray([shapes.data_to_world(c) for c in corners])
        local = np.asarray([ref.world_to_data(w) for w in world])[:, :2]
        data = ref.data[0] if ref.multiscale else ref.data
        lo = np.clip(np.floor(local.min(axis=0)).astype(int), 0, None)
        hi = np.minimum(np.ceil(local.max(axis=0)).astype(int), data.shape[:2])
        return np.asarray(data[lo[0]:hi[0], lo[1]:hi[1]])

    def prepare(self):
        from medloop.plugins.staining.normalise import fit_normaliser

        layer = self.image_layer()
        if layer is None:
            raise MedloopError("open an RGB image first")
        method = self.method_combo.currentText()
        normaliser = fit_normaliser(self.reference_region(), method, name=f"reference region of {self.reference_combo.currentText()}")
        data = layer.data

        def compute(progress, should_stop):
            progress(0, 1)
            out = normaliser.apply(np.asarray(data), name=f"layer {layer.name}")
            progress(1, 1)
            return out

        def done(rgb: np.ndarray) -> None:
            self.last_result = rgb
            name = f"{layer.name}_{method}"
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            self.viewer.add_image(rgb, name=name, rgb=True, **_spatial(layer, slice(0, 2)))
            self.status.setText(f"Done: {name}.")

        return compute, done


# -- Train stain transfer ------------------------------------------------------------------------
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
        self.panel, self.key = panel, default
        self.combo = QComboBox()
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("folder")
        self.folder.setToolTip("A folder of RGB images (png, jpg, tif, bmp)")
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
        else:  # first fill: A takes the first image, B the second (never the same layer as A), else a folder
            images = len(names) - 1
            pick = 0 if self.key == "A" or images == 0 else (1 if images >= 2 else images)
            self.combo.setCurrentIndex(pick)
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
        from medloop.app.gui.warmup import warm_up_training

        self.warmed = warm_up_training()  # torch._dynamo's import, off the Train click
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
                train_unpaired(a, b, folder, config, versions.name, progress, should_stop, names)

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
        window = getattr(getattr(self.viewer, "window", None), "_qt_window", None)
        for panel in window.findChildren(StainTransferPanel) if window is not None else ():
            panel.refresh_models(select=label)
