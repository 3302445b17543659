"""Axon tracking panel: click a seed at an axon's end, get its trace at once (in a worker),
see where the tracker was unsure (per-vertex entropy), correct the trace, fine-tune the tracker
on the corrections (progress, Cancel, live curve, versions with rollback).

Layers per image ``<name>``: ``<name> seeds`` (Points: every click traces), ``<name> traces``
(Shapes: one path per seed, float vertices, features seed_id / n_steps / mean_entropy /
stop_reason / edited) and ``<name> trace entropy`` (Points: the tracker's vertices coloured by
the entropy of their step). Traces and edits autosave (:class:`~.session.TraceStore`) and come
back when the image is opened again. All compute is in :mod:`.session` and :mod:`.trace`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QLinearGradient, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QPushButton,
    QSizePolicy, QSpinBox, QVBoxLayout, QWidget,
)

from medloop.app.errors import MedloopError
from medloop.app.gui.jobs import start_job
from medloop.app.gui.layers import layer_image
from medloop.app.gui.panel import Fold, MethodPanel
from medloop.plugins.axons import session as ses
from medloop.plugins.axons.sample import SYNTHETIC_KEY

if TYPE_CHECKING:
    import napari

TRACE_COLOUR = "#e69f00"  # the tracker's own paths (orange)
EDITED_COLOUR = "#cc79a7"  # paths the user edited or drew: what fine-tuning learns from (pink)
SEED_COLOUR = "#56b4e9"
ENTROPY_MAP = "viridis"
AUTOSAVE_NAME = "axon traces"
ADDED, CHANGED, REMOVED = "added", "changed", "removed"
HELP = (
    "Click at an axon's end in the seeds layer: it is traced at once "
    f"(<span style='color:{TRACE_COLOUR}'>orange</span>). Correct a trace in the traces layer: drag a vertex, "
    "remove vertices, or draw a missing path; edited paths turn "
    f"<span style='color:{EDITED_COLOUR}'>pink</span> and are what fine-tuning learns from."
)


def _warm_up_compute_imports() -> None:
    """Import torch and the tracker when the panel opens: an import holds the interpreter lock,
    so doing it inside the first trace would freeze the GUI for a second or more."""
    import scipy.spatial  # noqa: F401

    import medloop.plugins.axons.ppo  # noqa: F401 - torch, the nets, the environment
    import medloop.plugins.axons.trace  # noqa: F401


def _action(event: Any) -> str:
    return str(getattr(getattr(event, "action", None), "value", getattr(event, "action", ""))).lower()


@dataclass
class _Bound:
    """The image the panel traces on and its layers, autosave and tracker output."""

    name: str
    array: np.ndarray  # float32 (H, W), checked
    image: Any  # MedImage (geometry, path)
    store: ses.TraceStore
    seeds: Any = None
    traces: Any = None
    entropy: Any = None
    saver: Any = None
    traced: dict[int, ses.TracedPath] = field(default_factory=dict)
    seed_at: dict[int, np.ndarray] = field(default_factory=dict)
    pending: set[int] = field(default_factory=set)
    next_id: int = 0
    document: str = ""
    kwargs: dict = field(default_factory=dict)  # the image layer's grid, for the panel's layers
    colours: list = field(default_factory=list)  # the traces' edge colours as last set


class EntropyLegend(QWidget):
    """The entropy colour scale: low (dark, confident) to high (yellow, unsure), with its range."""

    def __init__(self) -> None:
        super().__init__()
        self.range: tuple[float, float] | None = None
        self.setMinimumHeight(3 * self.fontMetrics().height())
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Policy entropy of the tracker's step at each vertex: low = confident, high = unsure")

    def set_range(self, lo: float | None, hi: float | None) -> None:
        self.range = None if lo is None or hi is None else (float(lo), float(hi))
        self.update()

    def text(self) -> tuple[str, str]:
        lo, hi = ("", "") if self.range is None else (f" ({self.range[0]:.2g})", f" ({self.range[1]:.2g})")
        return f"low entropy = confident{lo}", f"high = unsure{hi}"

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        from napari.utils.colormaps import ensure_colormap

        painter = QPainter(self)
        line = self.fontMetrics().height()
        bar = QRectF(2, line + 2, self.width() - 4, line * 0.9)
        gradient = QLinearGradient(bar.topLeft(), bar.topRight())
        for t in np.linspace(0, 1, 9):
            r, g, b, _ = ensure_colormap(ENTROPY_MAP).map(np.array([t]))[0]
            gradient.setColorAt(float(t), QColor.fromRgbF(float(r), float(g), float(b)))
        painter.fillRect(bar, gradient)
        painter.setPen(self.palette().text().color())
        left, right = self.text()
        painter.drawText(QRectF(2, 0, self.width() - 4, line), Qt.AlignmentFlag.AlignLeft, "Vertex colour: step entropy")
        below = QRectF(2, bar.bottom() + 1, self.width() - 4, line)
        painter.drawText(below, Qt.AlignmentFlag.AlignLeft, left)
        painter.drawText(below, Qt.AlignmentFlag.AlignRight, right)
        painter.end()

    def sizeHint(self):  # noqa: N802 - Qt's name
        hint = super().sizeHint()
        hint.setHeight(3 * self.fontMetrics().height() + 6)
        return hint


class TrainingCurve(QWidget):
    """Fine-tuning's live curve per iteration (0 = before fine-tuning), measured on the user's
    paths: coverage (% of the path within 3 px of the trace, left axis) and the mean distance
    of the trace to the path (px, right axis)."""

    COLOURS = {"coverage": "#56b4e9", "error": "#e69f00"}
    KEYS = {"coverage": "val_coverage", "error": "val_error"}

    def __init__(self) -> None:
        super().__init__()
        self.points: dict[str, list[tuple[float, float]]] = {name: [] for name in self.COLOURS}
        self.setMinimumHeight(170)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Measured on your corrected paths after every iteration; 0 = the tracker before fine-tuning")

    def clear(self) -> None:
        for p in self.points.values():
            p.clear()
        self.update()

    def add(self, info: dict) -> None:
        """Take a fine-tune report: ``baseline`` (before) or an ``epoch`` record."""
        if info.get("event") not in ("baseline", "epoch"):
            return
        x = float(info.get("epoch", 0))
        for name, key in self.KEYS.items():
            value = info.get(key)
            if value is not None and np.isfinite(value):
                self.points[name].append((x, float(value)))
        self.update()

    def legend(self) -> list[str]:
        cov, err = self.points["coverage"], self.points["error"]
        return [
            f"coverage of your paths {cov[-1][1]:.0f} %" if cov else "coverage of your paths (%)",
            f"distance to them {err[-1][1]:.2f} px" if err else "distance to them (px)",
        ]

    def error_top(self) -> float:
        values = [v for _, v in self.points["error"]]
        return max(1.0, float(np.ceil(max(values)))) if values else 1.0

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        fm = painter.fontMetrics()
        line = fm.height()
        top = self.error_top()
        right_w = fm.horizontalAdvance(f"{top:g} px") + 6
        box = QRectF(fm.horizontalAdvance("100%") + 8, 2 * line + 6, 0, 0)
        box.setRight(self.width() - right_w - 4)
        box.setBottom(self.height() - line - 4)
        grey = QPen(QColor("#888888"))
        painter.setPen(grey)
        painter.drawRect(box)
        xs = [x for p in self.points.values() for x, _ in p] or [0.0, 1.0]
        x0, x1 = min(xs), max(max(xs), min(xs) + 1)
        for frac in (0.0, 1.0):
            y = box.bottom() - frac * box.height()
            painter.setPen(QPen(QColor(self.COLOURS["coverage"])))
            painter.drawText(QRectF(0, y - line / 2, box.left() - 3, line), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"{100 * frac:.0f}%")
            painter.setPen(QPen(QColor(self.COLOURS["error"])))
            painter.drawText(QRectF(box.right() + 3, y - line / 2, right_w, line), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, f"{frac * top:g} px")
        painter.setPen(grey)
        below = QRectF(box.left(), box.bottom() + 1, box.width(), line)
        if any(self.points.values()):
            painter.drawText(below, Qt.AlignmentFlag.AlignLeft, f"{x0:g}")
            painter.drawText(below, Qt.AlignmentFlag.AlignRight, f"{x1:g}")
        painter.drawText(below, Qt.AlignmentFlag.AlignHCenter, "iteration (0 = before)")
        for row, ((name, colour), text) in enumerate(zip(self.COLOURS.items(), self.legend())):
            painter.setPen(QPen(QColor(colour), 2))
            painter.drawText(QPointF(box.left(), (row + 1) * line), text)
            scale = 100.0 if name == "coverage" else top
            pts = [QPointF(box.left() + (x - x0) / (x1 - x0) * box.width(), box.bottom() - min(max(v / scale, 0), 1) * box.height()) for x, v in self.points[name]]
            for p in pts:
                painter.drawEllipse(p, 2, 2)
            if len(pts) > 1:
                painter.drawPolyline(QPolygonF(pts))
        if not any(self.points.values()):
            painter.setPen(grey)
            painter.drawText(box, int(Qt.AlignmentFlag.AlignCenter) | int(Qt.TextFlag.TextWordWrap), "curves appear while fine-tuning")
        painter.end()


class AxonPanel(MethodPanel):
    """Click-to-trace on a 2-D image with the deep-RL tracker; correct; fine-tune; roll back."""

    cancelled_message = "Fine-tuning cancelled; the tracker is unchanged."

    def __init__(self, napari_viewer: "napari.Viewer", tracker: ses.TrackerSource | None = None) -> None:
        super().__init__(napari_viewer)
        self.bound: _Bound | None = None
        self.chosen: str | None = None  # the image layer name the panel last took up
        self.source: ses.TrackerSource | None = None
        self.versions: ses.TrackerVersions | None = None
        self.actor = None  # the loaded actor of (source, version) in actor_key
        self.actor_key: tuple[str, int] | None = None
        self.trace_job = None
        self.side_jobs: list = []
        self._updating = False
        self._alive = [True]  # cleared when Qt deletes the panel: late job callbacks then do nothing
        self.destroyed.connect(lambda *_, alive=self._alive: alive.__setitem__(0, False))
        self._build_widgets()
        self._build_layout()
        self.image_combo.currentTextChanged.connect(self._image_changed)
        self.refresh_layers()
        self.set_tracker(tracker if tracker is not None else ses.packaged_tracker())
        _warm_up_compute_imports()

    # -- building ---------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        self.tracker_label = QLabel("none")
        self.tracker_button = QPushButton("Choose file…")
        self.tracker_button.setToolTip("Use an axon-tracker actor saved as .pt (save_actor or a training checkpoint)")
        self.tracker_button.clicked.connect(self.choose_tracker_file)
        self.projection_button = QPushButton("Make maximum projection")
        self.projection_button.setToolTip("Add a 2-D layer: the brightest value along the stack's first axis")
        self.projection_button.clicked.connect(self.make_projection)
        self.projection_button.hide()
        self.help = QLabel(HELP)
        self.help.setTextFormat(Qt.TextFormat.RichText)
        self.legend = EntropyLegend()
        self.finetune_button = QPushButton("Fine-tune on my corrections")
        self.finetune_button.setToolTip("Train the tracker on the paths you edited or drew (pink), in the background")
        self.finetune_button.clicked.connect(self.fine_tune)
        self.start_buttons.append(self.finetune_button)
        self.iterations_spin = QSpinBox()
        self.iterations_spin.setRange(1, 500)
        self.iterations_spin.setValue(ses.FineTuneParams.iterations)
        self.iterations_spin.setToolTip("PPO iterations; each rolls the tracker out along your paths and updates it")
        self.curve = TrainingCurve()
        self.version_combo = QComboBox()
        self.version_combo.setToolTip("base = the tracker as chosen; vN = fine-tuned, with its coverage of the paths it learnt from")
        self.rollback_button = QPushButton("Use this version")
        self.rollback_button.setToolTip("Trace with the chosen version from now on (existing traces stay)")
        self.rollback_button.clicked.connect(self.rollback)
        self.save_swc_button = QPushButton("Save SWC…")
        self.load_swc_button = QPushButton("Load SWC…")
        self.save_swc_button.clicked.connect(self.save_swc)
        self.load_swc_button.clicked.connect(self.load_swc)
        if _swc() is None:
            for b in (self.save_swc_button, self.load_swc_button):
                b.setEnabled(False)
                b.setToolTip("SWC support (medloop.plugins.axons.swc) is not installed")
        self._build_advanced()

    def _build_advanced(self) -> None:
        self.advanced = Fold("Advanced tracing options")
        self.max_steps_spin = QSpinBox()
        self.max_steps_spin.setRange(1, 100000)
        self.max_steps_spin.setValue(200)
        self.window_spin = QDoubleSpinBox()
        self.window_spin.setRange(0.1, 10.0)
        self.window_spin.setSingleStep(0.1)
        self.window_spin.setValue(1.0)
        self.window_spin.setToolTip("Size of the tracker's view: 1.0 on synthetic images, 1.5 on real microscopy")
        self.radius_spin = QDoubleSpinBox()
        self.radius_spin.setRange(0.1, 100.0)
        self.radius_spin.setValue(3.0)
        self.radius_spin.setSuffix(" px")
        self.entropy_check = QCheckBox("Stop when entropy exceeds")
        self.entropy_spin = QDoubleSpinBox()
        self.entropy_spin.setRange(-20.0, 20.0)
        self.entropy_spin.setSingleStep(0.1)
        self.entropy_spin.setValue(0.0)
        self.entropy_spin.setEnabled(False)
        self.entropy_check.toggled.connect(self.entropy_spin.setEnabled)
        self.max_step_label = QLabel("4 px (fixed by the network)")
        entropy_row = QHBoxLayout()
        entropy_row.addWidget(self.entropy_check)
        entropy_row.addWidget(self.entropy_spin)
        self.advanced.addRow("Max steps", self.max_steps_spin)
        self.advanced.addRow("Window scale", self.window_spin)
        self.advanced.addRow("", QLabel("1.0 on synthetic images, 1.5 on real microscopy (set when the image is chosen)"))
        self.advanced.addRow("Stop radius", self.radius_spin)
        self.advanced.addRow(entropy_row)
        self.advanced.addRow("Max step", self.max_step_label)

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        tracker = QHBoxLayout()
        tracker.addWidget(self.tracker_label, 1)
        tracker.addWidget(self.tracker_button)
        form.addRow("Tracker", tracker)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.status)
        layout.addWidget(self.projection_button)
        layout.addWidget(self.help)
        layout.addWidget(self.legend)
        tune = QHBoxLayout()
        tune.addWidget(self.finetune_button, 1)
        tune.addWidget(self.cancel_button)
        layout.addLayout(tune)
        iterations = QFormLayout()
        iterations.addRow("Fine-tune iterations", self.iterations_spin)
        layout.addLayout(iterations)
        layout.addWidget(self.progress)
        layout.addWidget(self.curve)
        versions = QHBoxLayout()
        versions.addWidget(QLabel("Version"))
        versions.addWidget(self.version_combo, 1)
        versions.addWidget(self.rollback_button)
        layout.addLayout(versions)
        swc = QHBoxLayout()
        swc.addWidget(self.save_swc_button)
        swc.addWidget(self.load_swc_button)
        layout.addLayout(swc)
        layout.addWidget(self.advanced)
        layout.addStretch(1)
        self.make_scrollable()

    # -- the image ------------------------------------------------------------------------------
    def refresh_layers(self, *_: Any) -> None:
        """Offer the image layers (without re-choosing on every layer the panel adds) and let go
        of an image whose layers were removed."""
        self.image_combo.blockSignals(True)
        try:
            self.offer_layers(self.image_combo, "image")
        finally:
            self.image_combo.blockSignals(False)
        b = self.bound
        if b is not None and any(layer not in self.viewer.layers for layer in (b.seeds, b.traces, b.entropy)):
            self._unbind()
            self.chosen = None
        if self.image_combo.currentText() != self.chosen:
            self._image_changed()

    def _image_changed(self, *_: Any) -> None:
        """Bind the chosen image: refuse a 3-D stack (offering its projection); check the image
        and read its saved traces in a worker; then make or restore its layers."""
        name = self.image_combo.currentText()
        self.chosen = name
        self._unbind()
        self.projection_button.hide()
        layer = self.image_layer()
        if layer is None:
            self.status.setText("Open a 2-D image (File > Open Sample > medloop > synthetic axons) to trace on.")
            return
        if layer.ndim == 3 and not layer.rgb:
            shape = "x".join(str(s) for s in np.shape(layer.data))
            self.status.setText(
                f"{name} is a 3-D stack ({shape}); the tracker follows axons in one 2-D image. "
                "Trace its maximum projection (as the paper did): press the button below.")
            self.projection_button.show()
            return
        self.window_spin.setValue(1.0 if layer.metadata.get(SYNTHETIC_KEY) else 1.5)
        data = layer.data[0] if layer.multiscale else layer.data
        image = layer_image(layer)
        self.status.setText(f"Checking {name} …")

        def compute():
            from medloop.plugins.axons.checks import check_image

            arr = check_image(np.asarray(data))
            store = ses.TraceStore.for_image(image, ses.content_digest(arr))
            try:
                return arr, store, store.load_traces(image, AUTOSAVE_NAME, arr.shape), None
            except MedloopError as exc:  # a damaged autosave must not stop tracing
                return arr, store, None, str(exc)

        def done(result) -> None:
            if self.chosen == name and self.image_layer() is layer:
                self._bind(layer, image, *result)

        self._side(compute, done, f"Cannot trace on {name}")

    def _bind(self, layer, image, arr: np.ndarray, store: ses.TraceStore, state: ses.TracesState | None, problem: str | None) -> None:
        name = layer.name
        b = _Bound(name, arr, image, store, kwargs=_grid_of(layer))
        existing = self._state_from_layers(name)
        restored = existing is None and state is not None
        state = existing or state or ses.TracesState()
        b.traced, b.seed_at = dict(state.traced), {int(k): np.asarray(v) for k, v in state.seeds.items()}
        b.next_id = 1 + max([-1, *b.seed_at, *b.traced])
        self._make_layers(b, state)
        from medloop.app.io.autosave import Autosaver

        b.saver = Autosaver(store, image, AUTOSAVE_NAME, lambda: b.document, table=True, on_error=self._autosave_failed)
        self.bound = b
        self._sync(b, save=False)
        self.viewer.layers.selection.active = b.seeds
        b.seeds.mode = "add"
        if problem:
            self.status.setText(problem)
        elif restored:
            self.status.setText(f"Restored {len(state.paths)} traces of {name} (autosaved in {store.folder}).")
        else:
            self.status.setText(f"Ready: click at an axon's end in '{b.seeds.name}'.")
        if self.source is None:
            self.status.setText(f"{self.status.text()} No tracker yet: choose a tracker file (.pt) with 'Choose file…'.")
        self._trace_pending()

    def _state_from_layers(self, name: str) -> ses.TracesState | None:
        """The state held by this image's layers when they are still open (the panel let go of
        the image and took it up again)."""
        layers = self.viewer.layers
        names = [f"{name} {s}" for s in ("seeds", "traces", "entropy")]
        if not all(n in layers for n in names):
            return None
        seeds, traces = layers[names[0]], layers[names[1]]
        ids = seeds.features["seed_id"].to_numpy(dtype=int) if "seed_id" in seeds.features else np.zeros(0, int)
        return ses.TracesState(
            paths=[np.asarray(p)[:, -2:] for p in traces.data], seed_ids=list(self._seed_ids(traces)),
            traced=dict(traces.metadata.get("axon_traced", {})),
            seeds={int(i): np.asarray(p)[-2:] for i, p in zip(ids, seeds.data) if i >= 0},
        )

    def _make_layers(self, b: _Bound, state: ses.TracesState) -> None:
        """The image's traces, entropy and seeds layers (reused when open), on its grid."""
        import pandas as pd

        layers = self.viewer.layers
        kwargs = b.kwargs
        side = float(min(b.array.shape))
        if f"{b.name} traces" not in layers:
            feats = pd.DataFrame(ses.trace_features(state.paths, state.seed_ids, b.traced)).astype(
                {"seed_id": int, "n_steps": int, "mean_entropy": float, "stop_reason": object, "edited": bool})
            self.viewer.add_shapes(
                [np.asarray(p) for p in state.paths] or None, shape_type="path", name=f"{b.name} traces",
                edge_color=TRACE_COLOUR, edge_width=_path_width(b.array.shape), face_color="transparent", features=feats, **kwargs)
        b.traces = layers[f"{b.name} traces"]
        b.traces.feature_defaults = {"seed_id": -1, "n_steps": 0, "mean_entropy": np.nan, "stop_reason": ses.DRAWN, "edited": True}
        b.traces.current_edge_color = EDITED_COLOUR
        b.traces.metadata["axon_traced"] = b.traced
        if f"{b.name} entropy" not in layers:
            self.viewer.add_points(
                np.zeros((0, 2)), name=f"{b.name} entropy", size=max(0.6, side / 160), border_width=0,
                features={"entropy": np.zeros(0), "seed_id": np.zeros(0, int)}, canvas_size_limits=(3, 12), **kwargs)
        b.entropy = layers[f"{b.name} entropy"]
        if f"{b.name} seeds" not in layers:
            ids = np.array(sorted(b.seed_at), dtype=int)
            pts = np.array([b.seed_at[i] for i in ids]).reshape(-1, 2)
            self.viewer.add_points(
                pts, name=f"{b.name} seeds", size=max(2.0, side / 40), face_color=SEED_COLOUR, symbol="ring",
                border_width=0, features={"seed_id": ids}, canvas_size_limits=(8, 24), **kwargs)
        b.seeds = layers[f"{b.name} seeds"]
        b.seeds.feature_defaults = {"seed_id": -1}
        b.seeds.events.data.connect(self._seeds_changed)
        b.traces.events.data.connect(self._traces_changed)

    def _unbind(self) -> None:
        b, self.bound = self.bound, None
        if b is None:
            return
        for layer, handler in ((b.seeds, self._seeds_changed), (b.traces, self._traces_changed)):
            if layer is not None:
                layer.events.data.disconnect(handler)
        if b.saver is not None:
            b.saver.close()  # writes what is pending

    def make_projection(self) -> None:
        """Add the chosen 3-D stack's maximum projection as a 2-D image layer and choose it."""
        layer = self.image_layer()
        if layer is None or layer.ndim != 3:
            return
        data, name = layer.data, f"{layer.name} max projection"

        def done(projection) -> None:
            added = self.viewer.add_image(
                projection, name=name, scale=layer.scale[-2:], translate=layer.translate[-2:], units=layer.units[-2:],
                colormap=layer.colormap.name, metadata={k: v for k, v in layer.metadata.items() if k != "medloop_image"})
            self.image_combo.setCurrentText(added.name)

        self.status.setText(f"Making the maximum projection of {layer.name} …")
        self._side(lambda: ses.max_projection(data), done, "Cannot make the projection")

    # -- seeds and tracing ------------------------------------------------------------------------
    @staticmethod
    def _seed_ids(layer) -> np.ndarray:
        feats = layer.features
        return feats["seed_id"].to_numpy(dtype=int, copy=True) if "seed_id" in feats else np.full(len(layer.data), -1)

    @staticmethod
    def _new_rows(ids: np.ndarray) -> np.ndarray:
        """Rows whose seed id is not their own: -1, or a repeat of an earlier row's id (napari
        gives a new point or shape the features of the one selected; a copy-paste repeats them)."""
        _, first = np.unique(ids, return_index=True)
        own = np.zeros(len(ids), dtype=bool)
        own[first] = True
        return np.flatnonzero(~own | (ids < 0))

    def _seeds_changed(self, event: Any = None) -> None:
        """A click added a seed (trace it now) or a seed was dragged (trace it again)."""
        b = self.bound
        if self._updating or b is None or _action(event) not in (ADDED, CHANGED, REMOVED):
            return
        if _action(event) == REMOVED:  # a deleted seed leaves its trace (delete that separately)
            kept = set(self._seed_ids(b.seeds).tolist())
            b.seed_at = {i: p for i, p in b.seed_at.items() if i in kept}
            self._save(b, *self._paths(b))
            return
        column = b.seeds.features.columns.get_loc("seed_id")
        ids = self._seed_ids(b.seeds)
        for i in self._new_rows(ids):
            ids[i], b.next_id = b.next_id, b.next_id + 1
            b.seeds.features.iat[i, column] = ids[i]
        for sid, point in zip(ids, np.asarray(b.seeds.data, dtype=np.float64)[:, -2:]):
            if int(sid) in b.seed_at and np.linalg.norm(point - b.seed_at[int(sid)]) <= 0.5:
                continue
            b.seed_at[int(sid)] = point
            b.pending.add(int(sid))
        self._save(b, *self._paths(b))  # the seeds are part of the autosave; the traces are unchanged
        self._trace_pending()

    def trace_params(self):
        """The tracing settings of the Advanced section."""
        from medloop.plugins.axons.trace import TraceParams

        return TraceParams(
            max_steps=self.max_steps_spin.value(), window_scale=self.window_spin.value(),
            stop_radius_px=self.radius_spin.value(),
            entropy_stop=self.entropy_spin.value() if self.entropy_check.isChecked() else None,
        )

    def _inside(self, b: _Bound, ids: list[int]) -> list[int]:
        """Seeds inside the image; the first outside one is named in the status line."""
        from medloop.plugins.axons.checks import TracingInputError, check_points

        keep = []
        for sid in ids:
            try:
                check_points(b.seed_at[sid], b.array.shape)
                keep.append(sid)
            except TracingInputError as exc:
                self.status.setText(str(exc).replace("seed 0 at", f"seed {sid} at", 1))
        return keep

    def _trace_pending(self) -> None:
        """Trace every seed waiting (one batched worker job); seeds clicked meanwhile wait for
        the next job."""
        b = self.bound
        if b is None or self.trace_job is not None or not b.pending:
            return
        if self.source is None:
            self.status.setText("No tracker yet: choose a tracker file (.pt) with 'Choose file…'; your seeds are traced then.")
            return
        ids = self._inside(b, sorted(i for i in b.pending if i in b.seed_at))
        b.pending.clear()
        if not ids:
            return
        seeds, arr, params = np.array([b.seed_at[i] for i in ids]), b.array, self.trace_params()
        load = self._actor_loader()

        def compute(progress, should_stop):
            from medloop.plugins.axons.trace import trace_with

            actor, key = load()
            return actor, key, trace_with(arr, seeds, actor, params, should_stop=should_stop)

        def done(result) -> None:
            actor, key, traces = result
            self._keep_actor(actor, key)
            if self.bound is b:
                self._show_traces(b, ids, traces)

        def finished() -> None:
            self.trace_job = None
            self._trace_pending()

        self.status.setText(f"Tracing {len(ids)} seed{'s' if len(ids) > 1 else ''} …")
        self.trace_job = start_job(
            compute, self._if_alive(done), on_error=self._if_alive(lambda exc: self._failed(exc, "Tracing failed")),
            on_finished=self._if_alive(finished))

    def _show_traces(self, b: _Bound, ids: list[int], traces: list) -> None:
        """Put new traces in the traces layer (a re-traced seed's path is replaced)."""
        paths, sids = self._paths(b)
        new = []
        for sid, trace in zip(ids, traces):
            b.traced[sid] = ses.traced_from(trace)
            if sid in sids:
                paths[sids.index(sid)] = b.traced[sid].vertices
            else:
                new.append(sid)
        with self._quiet():
            width = _path_width(b.array.shape)
            if not set(ids) & set(sids):  # only new seeds: append (the user's selection stays)
                b.traces.add([b.traced[s].vertices for s in new], shape_type="path", edge_color=TRACE_COLOUR, edge_width=width)
            else:  # a dragged seed was re-traced: its path is replaced
                b.traces.selected_data = set(range(b.traces.nshapes))
                b.traces.remove_selected()
                b.traces.add(paths + [b.traced[s].vertices for s in new], shape_type="path", edge_color=TRACE_COLOUR, edge_width=width)
            column = b.traces.features.columns.get_loc("seed_id")
            for row, sid in enumerate(sids + new):
                b.traces.features.iat[row, column] = sid
        self._sync(b)
        last = b.traced[ids[-1]]
        steps = last.entropy[:-1] if len(last.entropy) > 1 else last.entropy
        version = f"v{self.actor_key[1]}" if self.actor_key and self.actor_key[1] else "the base tracker"
        self.status.setText(
            f"Traced seed {ids[-1]} with {version}: {len(last.vertices) - 1} steps, {_STOPS.get(last.stop_reason, last.stop_reason)}; "
            f"mean entropy {np.nanmean(steps) if len(steps) else float('nan'):.2f} (lower = surer).")

    # -- edits, layers and autosave ---------------------------------------------------------------
    def _paths(self, b: _Bound) -> tuple[list[np.ndarray], list[int]]:
        """The traces layer's paths ((N, 2) row/col) and their seed ids (-1: drawn; a path
        drawn or pasted while a trace was selected is marked drawn here)."""
        ids = self._seed_ids(b.traces)
        new = self._new_rows(ids)
        if len(new):
            ids[new] = -1
            b.traces.features.iloc[new, b.traces.features.columns.get_loc("seed_id")] = -1
        return [np.asarray(p, dtype=np.float64)[:, -2:] for p in b.traces.data], [int(s) for s in ids]

    def _traces_changed(self, event: Any = None) -> None:
        """The user moved, removed or drew something in the traces layer: recolour, autosave."""
        if not self._updating and self.bound is not None and _action(event) in (ADDED, CHANGED, REMOVED):
            self._sync(self.bound)

    def _sync(self, b: _Bound, save: bool = True) -> None:
        """Features, colours (orange: the tracker's, pink: edited), the entropy points and the
        autosave document from the traces layer as it is now; layers are touched only where
        something changed (each touch repaints the canvas on the GUI thread)."""
        paths, sids = self._paths(b)
        feats = ses.trace_features(paths, sids, b.traced)
        with self._quiet():
            for key, values in feats.items():
                if len(values) == len(b.traces.features):
                    b.traces.features[key] = values
            colours = [EDITED_COLOUR if e else TRACE_COLOUR for e in feats["edited"]]
            if colours and colours != b.colours:
                b.traces.edge_color = colours
            b.colours = colours
            self._show_entropy(b, paths, sids)
        self._save(b, paths, sids, save)

    def _save(self, b: _Bound, paths: list[np.ndarray], sids: list[int], save: bool = True) -> None:
        """The autosave document as things are now; the saver writes it within its delay."""
        import json

        b.document = json.dumps(ses.traces_document(b.array.shape, paths, sids, b.traced, b.seed_at))
        if save and b.saver is not None:
            b.saver.changed()

    def _show_entropy(self, b: _Bound, paths: list[np.ndarray], sids: list[int]) -> None:
        from napari.utils.colormaps import ensure_colormap

        pts, ent, ids = ses.entropy_points(paths, sids, b.traced)
        every = np.concatenate([t.entropy for t in b.traced.values()] + [np.zeros(0)])
        every = every[np.isfinite(every)]
        lo, hi = (np.percentile(every, 2), np.percentile(every, 98)) if len(every) else (None, None)
        if (pts.shape == b.entropy.data.shape and np.array_equal(pts, b.entropy.data)
                and self.legend.range == (None if lo is None else (float(lo), float(hi)))):
            return  # nothing the user sees would change
        # one repaint instead of three: napari's per-setter events each redraw the points (and
        # growing the data goes through Points.add and its selection), tens of ms of GUI thread
        with b.entropy.events.blocker_all():
            b.entropy.data = pts
            b.entropy.features = {"entropy": ent, "seed_id": ids}
            if len(pts):
                span = (hi - lo) or 1.0
                b.entropy.face_color = ensure_colormap(ENTROPY_MAP).map(np.clip((ent - lo) / span, 0, 1))
            b.entropy.selected_data = set()
        b.entropy.refresh()
        self.legend.set_range(lo, hi)

    def _quiet(self):
        """A context in which the panel's own layer updates are not taken for user edits."""
        from contextlib import contextmanager

        @contextmanager
        def quiet():
            before, self._updating = self._updating, True
            try:
                yield
            finally:
                self._updating = before

        return quiet()

    def _autosave_failed(self, exc: BaseException) -> None:
        # the saver's thread: only note it; the status line is updated from the next edit's sync
        import warnings

        warnings.warn(f"axon traces autosave failed: {exc}; retried on the next edit", stacklevel=2)

    # -- the tracker and its versions -----------------------------------------------------------
    def set_tracker(self, source: ses.TrackerSource | None) -> None:
        """Trace with ``source`` (None: no tracker yet); its fine-tuned versions are offered."""
        self.source, self.actor, self.actor_key = source, None, None
        if source is None:
            self.versions = None
            self.tracker_label.setText("none yet")
            self.tracker_label.setToolTip("No packaged tracker is installed: choose a tracker file (.pt)")
            self._fill_versions()
            self.finetune_button.setEnabled(False)
            return
        self.tracker_label.setText(source.description or source.name)
        self.tracker_label.setToolTip(source.name)
        self.versions = ses.TrackerVersions(ses.versions_root(), source.name)
        self._fill_versions()
        self.finetune_button.setEnabled(self.job is None)
        self._preload()
        self._trace_pending()

    def set_tracker_file(self, path: str) -> None:
        """Trace with the actor saved at ``path``."""
        try:
            self.set_tracker(ses.tracker_from_file(path))
        except MedloopError as exc:
            self._failed(exc, "Cannot use that tracker")

    def choose_tracker_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose an axon tracker", "", "Axon tracker (*.pt *.pth);;All files (*)")
        if path:
            self.set_tracker_file(path)

    def _current_version(self) -> int:
        try:
            return self.versions.current if self.versions is not None else 0
        except MedloopError as exc:
            self.status.setText(str(exc))
            return 0

    def _actor_loader(self):
        """A function for a worker: (actor, key) of the version in use, loaded unless cached."""
        source, versions, version = self.source, self.versions, self._current_version()
        key = (source.name, version)
        cached = self.actor if self.actor_key == key else None

        def load():
            from medloop.plugins.axons.nets import load_actor

            if cached is not None:
                return cached, key
            return (ses.load_tracker_actor(source) if version == 0 else load_actor(versions.actor_path(version))), key

        return load

    def _keep_actor(self, actor, key) -> None:
        if self.source is not None and key == (self.source.name, self._current_version()):
            self.actor, self.actor_key = actor, key

    def _preload(self) -> None:
        """Load the tracker in a worker now, so the first click traces at once."""
        load = self._actor_loader()
        self._side(load, lambda result: self._keep_actor(*result), "Cannot load the tracker")

    def _fill_versions(self) -> None:
        self.version_combo.clear()
        if self.versions is None:
            self.rollback_button.setEnabled(False)
            return
        for v in [0, *self.versions.list()]:
            info = self.versions.info(v) if v else {}
            after = info.get("coverage_after")
            self.version_combo.addItem(f"v{v} · {after:.0f} %" if isinstance(after, (int, float)) else ("base" if v == 0 else f"v{v}"), v)
        self.version_combo.setCurrentIndex(max(0, self.version_combo.findData(self._current_version())))
        self.rollback_button.setEnabled(self.version_combo.count() > 1)

    def rollback(self) -> None:
        """Trace with the chosen version from now on (nothing is deleted; traces stay)."""
        version = self.version_combo.currentData()
        if self.versions is None or version is None:
            return
        try:
            self.versions.rollback(int(version))
        except MedloopError as exc:
            self._failed(exc, "Cannot use that version")
            return
        self.actor, self.actor_key = None, None
        self.status.setText(f"Tracing with {self.version_combo.currentText()} from now on.")
        self._preload()

    # -- fine-tuning ------------------------------------------------------------------------------
    def fine_tune(self) -> None:
        """Fine-tune the tracker in use on the paths the user edited or drew; save a version."""
        b = self.bound
        if b is None or self.source is None:
            self.status.setText("Choose a 2-D image and a tracker, trace, and correct a trace first.")
            return
        paths, sids = self._paths(b)
        corrected = [p for p in ses.corrected_paths(paths, sids, b.traced) if len(p) >= 2]
        if not corrected:
            self.status.setText(
                f"Nothing to learn from yet: in '{b.traces.name}' drag a vertex of a wrong trace, remove vertices, "
                "or draw the missing path; edited paths turn pink.")
            return
        params = ses.FineTuneParams(
            iterations=self.iterations_spin.value(), window_scale=self.window_spin.value(), stop_radius_px=self.radius_spin.value())
        load, versions, arr = self._actor_loader(), self.versions, b.array

        def compute(progress, should_stop):
            actor, _ = load()
            result = ses.fine_tune(actor, arr, corrected, params, progress, should_stop)
            info = {"coverage_before": result.coverage_before, "coverage_after": result.coverage_after,
                    "iterations": result.iterations, "paths": result.n_paths, "image": b.name}
            return result, versions.save(result.actor, info)  # the weights are written here, not on the GUI thread

        def done(out) -> None:
            result, version = out
            self._fill_versions()
            self._keep_actor(result.actor, (self.source.name, version))
            fell = (" No iteration beat the tracker you started from, so this version keeps its weights." if result.kept_start
                    else " It did worse than before: choose the previous version and press 'Use this version'."
                    if result.coverage_after < result.coverage_before else "")
            self.status.setText(
                f"Saved v{version}: coverage of your {result.n_paths} path{'s' if result.n_paths > 1 else ''} "
                f"{result.coverage_before:.0f} % → {result.coverage_after:.0f} %; new seeds are traced with it.{fell}")

        self.curve.clear()
        self.status.setText(f"Fine-tuning on {len(corrected)} corrected path{'s' if len(corrected) > 1 else ''} …")
        self.start(compute, done, on_info=self.curve.add)

    # -- SWC --------------------------------------------------------------------------------------
    def save_swc(self) -> None:
        if self.bound is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save traces as SWC", f"{self.bound.name}.swc", "SWC (*.swc)")
        if path:
            self.save_swc_to(path)

    def load_swc(self) -> None:
        if self.bound is None:
            return
        path, _ = QFileDialog.getOpenFileName(self, "Load traces from SWC", "", "SWC (*.swc);;All files (*)")
        if path:
            self.load_swc_from(path)

    def save_swc_to(self, path: str) -> None:
        """Write the traces layer's paths (one tree each) to ``path`` in a worker, in the image's
        physical units when it has a spacing."""
        swc, b = _swc(), self.bound
        if swc is None or b is None:
            return
        paths = [p for p in self._paths(b)[0] if len(p) >= 2]
        scale = tuple(float(s) for s in b.traces.scale[-2:])
        spacing = None if np.allclose(scale, 1.0) else scale
        done = lambda _: self.status.setText(f"Saved {len(paths)} traces to {path}.")  # noqa: E731
        self._side(lambda: swc.write_swc(path, paths, spacing=spacing), done, "Cannot save SWC")

    def load_swc_from(self, path: str) -> None:
        """Add the paths of an SWC file as drawn paths (they count as corrections)."""
        swc, b = _swc(), self.bound
        if swc is None or b is None:
            return

        def done(paths) -> None:
            if self.bound is not b:
                return
            b.traces.add([np.asarray(p, dtype=np.float64)[:, -2:] for p in paths], shape_type="path", edge_color=EDITED_COLOUR, edge_width=_path_width(b.array.shape))
            self.status.setText(f"Loaded {len(paths)} paths from {path}.")

        self._side(lambda: swc.read_swc(path), done, "Cannot load SWC")

    # -- jobs -------------------------------------------------------------------------------------
    def _side(self, compute, done, what: str) -> None:
        """A short worker job beside the fine-tune (image check, loading, files)."""
        holder: list = []

        def finished() -> None:
            if holder and holder[0] in self.side_jobs:
                self.side_jobs.remove(holder[0])

        job = start_job(
            lambda progress, should_stop: compute(), self._if_alive(done),
            on_error=self._if_alive(lambda exc: self._failed(exc, what)), on_finished=finished)
        holder.append(job)
        self.side_jobs.append(job)

    def _if_alive(self, callback):
        """``callback`` that does nothing once the panel is deleted (a job may end after the
        viewer closed)."""
        alive = self._alive

        def call(*args):
            if alive[0]:
                callback(*args)

        return call

    def _failed(self, exc: BaseException, what: str) -> None:
        from napari.utils.notifications import show_error

        self.status.setText(f"{what}: {exc}")
        show_error(f"{what}: {exc}")

    def busy(self) -> bool:
        """Whether any of the panel's jobs still runs (tests and scripts wait on this)."""
        return self.job is not None or self.trace_job is not None or bool(self.side_jobs)

    def job_finished(self) -> None:
        self.finetune_button.setEnabled(self.source is not None)

    def release(self) -> None:
        self._unbind()  # writes pending edits


_STOPS = {
    "end": "reached an end point", "border": "stopped at the image border", "max_steps": "ran the maximum number of steps (Advanced)",
    "entropy": "stopped where the tracker became unsure", "cancelled": "cancelled",
}


def _grid_of(layer) -> dict[str, Any]:
    """The image layer's placement (scale, translate, units, affine): the panel's layers then
    have data coordinates equal to the image's (row, col) pixel indices."""
    kwargs = {"scale": layer.scale, "translate": layer.translate, "units": layer.units}
    if not np.allclose(layer.affine.affine_matrix, np.eye(len(layer.affine.affine_matrix))):
        kwargs["affine"] = layer.affine
    return kwargs


def _path_width(shape: tuple[int, ...]) -> float:
    """Path width in pixels: visible on a small image, not hiding the axon on a large one."""
    return float(max(0.4, min(shape) / 300))


def _swc():
    """The SWC module (``write_swc(path, paths, spacing=None)``, ``read_swc(path)``), or None
    while it is not installed."""
    try:
        from medloop.plugins.axons import swc
    except ImportError:
        return None
    return swc if hasattr(swc, "write_swc") and hasattr(swc, "read_swc") else None
