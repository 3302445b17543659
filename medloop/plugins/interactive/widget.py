"""Click -> object panel: click an object in the image, refine it with more clicks, a box or a
scribble, commit it into a labels layer (a Correction annotation layer, a Review mask, or a new
``<image> objects`` layer) as the chosen class.

All compute is the Qt-free :class:`~medloop.plugins.interactive.session.PromptSession`, run by
one worker per session (:func:`medloop.app.gui.jobs.start_job`): requests queue there, the
latest click wins (clicks it replaced are still logged, as ``skip`` rows), and the GUI thread
only applies each interaction's voxel diff through ``Labels.data_setitem`` -- one napari history
step per interaction, voxels painted meanwhile kept. The worker runs at a lower CPU priority than
the GUI thread (on a loaded 2-core machine this halved the worst event-loop stall). Labels and the
prompt log autosave on every interaction: the autosaved labels hold the committed objects and,
where the open object lies, what was there before it; the open object lives in the prompt log,
and Start on the same image and target replays it (crash recovery).

Layers made by *Start* for image ``<name>``: ``<name> prompts`` (Points, features ``positive``
and ``object``: green positive, red negative), ``<name> prompt box`` (Shapes: a rectangle on the
displayed slice) and ``<name> scribbles`` (Labels: 1 positive, 2 negative), all on the image's
grid. Keys on the prompts and image layers: T polarity, Enter commit, N next object (commits
the current one), Escape reset the object, Ctrl+Z / Ctrl+Shift+Z undo / redo, B box, S scribble,
Alt+wheel tolerance. Where napari already binds one of these keys on a layer type (its keymap is
read at run time, :func:`layer_keys`) the action takes its alternative there: Shift+T,
Shift+Enter, Shift+Escape, Alt+Z, Alt+Shift+Z, Shift+B, Shift+S (:data:`ALTERNATIVES`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout,
)

from medloop.app.errors import MedloopError
from medloop.app.gui.jobs import start_job
from medloop.app.gui.layers import layer_image
from medloop.app.gui.panel import MethodPanel
from medloop.plugins.interactive import loop

if TYPE_CHECKING:
    import napari

POSITIVE_COLOUR = "#2ca02c"
NEGATIVE_COLOUR = "#d62728"
BOX_COLOUR = "#ffd700"
#: Values 1, 2, ... of a new objects layer: never the prompts' green or red (Okabe-Ito blue, orange,
#: sky blue, purple, yellow).
OBJECT_COLOURS = ("#0072b2", "#e69f00", "#56b4e9", "#cc79a7", "#f0e442")
NEW_TARGET = "(new) {image} objects"
AUTOSAVE_DELAY_S = 0.5
REFUSED_3D = "Clicks work on a 2-D view only: press Ctrl+Y for 2-D and click on a slice."
HELP = (
    f"Click an object: <span style='color:{POSITIVE_COLOUR}'>positive</span> click; "
    f"Shift+click: <span style='color:{NEGATIVE_COLOUR}'>negative</span>. T flips the polarity, Enter commits, "
    "N next object, Esc resets it, Ctrl+Z / Ctrl+Shift+Z undo / redo, Alt+wheel tolerance. "
    "B: draw a box, Shift+S: scribble (press again to click). On the box and scribble layers, keys napari "
    "uses take Shift (Enter, Esc, T, B, S) or Alt (Alt+Z, Alt+Shift+Z)."
)
#: Panel actions and their keys on the prompts and image layers.
KEYS = {"polarity": "T", "commit": "Enter", "next": "N", "reset": "Escape", "undo": "Control-Z", "redo": "Control-Shift-Z",
        "box": "B", "scribble": "S"}
#: The key an action takes on a layer where napari already binds its usual key.
ALTERNATIVES = {"polarity": "Shift-T", "commit": "Shift-Enter", "reset": "Shift-Escape", "undo": "Alt-Z", "redo": "Alt-Shift-Z",
                "box": "Shift-B", "scribble": "Shift-S"}


def napari_keys(layer_class: type) -> set[str]:
    """The keys napari itself binds on ``layer_class`` (as napari spells them, e.g. "Ctrl+Z"):
    its class keymap and the shortcuts of its layer actions (defaults and user settings)."""
    from napari.utils.action_manager import action_manager
    from napari.utils.shortcuts import default_shortcuts

    taken = {str(k) for k in layer_class.class_keymap}
    for name, action in action_manager._actions.items():
        if action.keymapprovider is layer_class:
            taken |= {str(k) for k in default_shortcuts.get(name, [])}
            taken |= {str(k) for k in action_manager._shortcuts.get(name, [])}
    return taken


def layer_keys(layer_class: type) -> dict[str, str]:
    """The panel's key for each action on ``layer_class``: its usual key unless napari binds
    that key on this layer type, then the documented alternative (:data:`ALTERNATIVES`)."""
    from napari.utils.key_bindings import coerce_keybinding

    taken = napari_keys(layer_class)
    return {a: (ALTERNATIVES[a] if str(coerce_keybinding(k)) in taken and a in ALTERNATIVES else k) for a, k in KEYS.items()}


def _prepare_imports() -> None:
    """Import the engines' libraries in the worker, before the first click needs them."""
    import SimpleITK  # noqa: F401
    import skimage.segmentation  # noqa: F401

    import medloop.plugins.interactive.classical  # noqa: F401


def _warm_engine(engine: Any, params: Any) -> None:
    """One tiny segmentation, so lazy initialisations (ITK's filters, caches) are paid now."""
    from medloop.app.io.image import MedImage
    from medloop.plugins.interactive.prompts import Point
    from medloop.plugins.interactive.session import PromptSession

    rng = np.random.default_rng(0)
    cube = rng.normal(0, 0.1, (24, 24, 24)).astype(np.float32)
    cube[8:16, 8:16, 8:16] += 1.0
    PromptSession(MedImage(cube, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)), None, replace(params, label=1), engine=engine).add(Point((12.0, 12.0, 12.0)))


def _lower_priority() -> None:
    """Give the calling (worker) thread a lower CPU priority than the GUI thread, so that on a
    busy machine the event loop is scheduled first (Linux: per-thread nice; elsewhere nothing)."""
    import os

    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5))
    except (AttributeError, OSError):
        pass


@dataclass
class _Setup:
    """What a session needs, gathered on the GUI thread when Start is pressed."""

    image_name: str
    image: Any  # MedImage
    target_name: str
    params: Any  # InteractiveParams
    new_target: bool
    store: Any = None  # AnnotationStore
    saved: Any = None  # labels loaded from the autosave for a new target
    labels: Any = None  # the target layer's array (the session edits it through the GUI thread)
    rows: list = field(default_factory=list)  # the prompt log found beside the labels
    log_path: Any = None
    problem: str = ""


class _Runner:
    """One worker per session. ``submit`` queues a request (a newer prompt replaces a queued
    one, whose prompt is logged as skipped); the worker runs them in order and reports to the
    GUI thread through ``on_info``; the session's writer waits until the GUI applied a diff."""

    def __init__(self, setup: _Setup, on_info: Callable[[dict], None], on_error: Callable, on_finished: Callable,
                 persist: Callable[[], None] | None = None) -> None:
        self.setup = setup
        self.persist = persist  # saves the labels at a commit (in this worker), before the log says so
        self.cond = threading.Condition()
        self.pending: list[tuple[int, str, Any]] = []
        self.skipped: list[Any] = []
        self.replaced: set[int] = set()  # serials of prompts a later one replaced (never run)
        self.serial = 0
        self.runs = 0
        self.session = None
        self.progress: Callable | None = None
        self.job = start_job(self._loop, on_done=lambda _: None, on_error=on_error, on_finished=on_finished, on_info=on_info)

    def submit(self, kind: str, payload: Any = None) -> int:
        with self.cond:
            self.serial += 1
            if kind == "prompt" and self.pending and self.pending[-1][1] == "prompt":
                replaced = self.pending.pop()
                self.skipped.append(replaced[2])
                self.replaced.add(replaced[0])
            self.pending.append((self.serial, kind, payload))
            self.cond.notify()
            return self.serial

    def stop(self) -> None:
        self.job.cancel()
        with self.cond:
            self.cond.notify()

    @property
    def busy(self) -> bool:
        return self.job.running

    # -- the worker thread ---------------------------------------------------------------------
    def _emit(self, info: dict) -> None:
        self.progress(0, 0, info)

    def _writer(self, update: Any) -> None:
        """The session's writer: the GUI thread applies the diff; wait until it has."""
        ack = threading.Event()
        # The object's state after this diff (the session updates it before writing) goes with
        # it: the GUI swaps both at once, so an autosave never sees one without the other.
        self._emit({"kind": "write", "update": update, "ack": ack, "open": self._open_crop()})
        while not ack.wait(0.1):
            if self.job.stop.is_set():
                from medloop.app.engine.jobs import JobCancelled

                raise JobCancelled()

    def _loop(self, progress: Callable, should_stop: Callable[[], bool]) -> None:
        self.progress = progress
        _lower_priority()
        self.session = self._open()
        self._emit({"kind": "ready", "snapshot": self._snapshot(), "restored": self._restored})
        while True:
            with self.cond:
                while not self.pending and not should_stop():
                    self.cond.wait(0.25)
                if should_stop():
                    return None
                serial, kind, payload = self.pending.pop(0)
                skipped, self.skipped = self.skipped, []
            self._log_skipped(skipped)
            self._handle(serial, kind, payload, should_stop)

    def _open(self) -> Any:
        from medloop.plugins.interactive.session import PromptSession, make_engine

        s = self.setup
        _prepare_imports()
        engine = make_engine(s.params)
        _warm_engine(engine, s.params)
        session = PromptSession(s.image, self.labels, s.params, engine=engine, writer=self._writer)
        self.session = session  # the writer reads the open object's state while the log replays
        self._restored = session.resume(s.rows) if s.rows else 0
        session.on_commit = self.persist
        self._first_seq = session.seq  # prompts counted for Review are this session's own
        session.log_path = s.log_path
        return session

    def _log_skipped(self, prompts: list) -> None:
        self.session.log_skipped(prompts)

    def _handle(self, serial: int, kind: str, payload: Any, should_stop: Callable[[], bool]) -> None:
        s = self.session
        try:
            if kind == "prompt":
                self.runs += 1
                update = s.add(payload, should_stop)
            elif kind == "params":
                s.params = payload
                update = None
            elif kind == "commit":
                update = self._commit(payload)
            else:  # undo, redo, confirm, reset_object
                update = getattr(s, kind)()
        except MedloopError as exc:
            self._emit({"kind": "refused", "serial": serial, "message": str(exc), "snapshot": self._snapshot()})
            return
        self._emit({"kind": "done", "serial": serial, "request": kind, "update": update, "snapshot": self._snapshot()})

    def _commit(self, ring: Any) -> Any:
        """Commit the object; in a Correction layer with its ring (a ``Ring``, or None)."""
        from medloop.plugins.interactive.session import Update

        s = self.session
        done = s.commit(ring)
        message = s.log[-1].message or f"object {done} committed"
        return Update(tuple(np.zeros(0, np.intp) for _ in range(s.ndim)), np.zeros(0), np.zeros(0), None, message)

    def _open_crop(self) -> Any:
        """(roi, mask, base) of the open object: the voxels the autosave leaves out (None: none)."""
        obj = self.session.object
        return None if obj.mask is None else (obj.roi, obj.mask.copy(), obj.base.copy())

    def _snapshot(self) -> dict:
        """What the GUI shows and autosaves: the open object's points (array indices), its
        voxels, the crop the autosave excludes (the open object lives in the log)."""
        from medloop.plugins.interactive.prompts import Point, physical_to_index

        s = self.session
        obj = s.object
        points = [(physical_to_index(s.image, np.asarray(p.xyz_mm))[0], p.positive) for p in obj.prompts if isinstance(p, Point)]
        return {"points": points, "object": obj.id, "voxels": s.object_voxels, "committed": len(s.committed),
                "undo": len(s.undo_stack), "redo": len(s.redo_stack), "waiting": obj.pending is not None, "open": self._open_crop(),
                "prompts": len({r.seq for r in s.log if r.event == "prompt" and r.seq > self._first_seq}), "runs": self.runs, "label": s.params.label}

    @property
    def labels(self) -> np.ndarray:
        return self.setup.labels


@dataclass
class _Bound:
    """The running session's layers and their autosave."""

    setup: _Setup
    image_layer: Any
    target: Any
    prompts: Any
    box: Any
    scribbles: Any
    runner: _Runner | None = None
    saver: Any = None
    scribbles_seen: Any = None
    pending: dict = field(default_factory=dict)  # serial -> (index, positive): clicks not yet answered
    snapshot: dict = field(default_factory=dict)
    open_lock: Any = field(default_factory=threading.Lock)
    started: float = field(default_factory=time.monotonic)
    first_prompt: float | None = None
    review_base: tuple[int, float] = (0, 0.0)
    keys: list = field(default_factory=list)  # (layer, key) bound by the panel
    applied: int = 0  # diffs applied by the GUI thread
    snapshot_open: Any = None  # (roi, mask, base) of the open object, for the autosave thread
    answered: int = -1  # the last request serial the worker answered (-1: not ready yet)


class InteractivePanel(MethodPanel):
    """Click -> object (see the module docstring)."""

    def __init__(self, napari_viewer: "napari.Viewer") -> None:
        super().__init__(napari_viewer)
        self.bound: _Bound | None = None
        self.negative_next = False
        self.last_info: dict = {}
        self._alive = [True]
        self._build_widgets()
        self._build_layout()
        self.refresh_layers()

    # -- building ------------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        self.target_combo = QComboBox()
        self.class_combo = QComboBox()
        self.class_spin = QSpinBox()
        self.class_spin.setRange(1, 65535)
        self.engine_combo = QComboBox()
        self.engine_combo.addItems(["auto", "classical", "learned"])
        self.tolerance_spin = QDoubleSpinBox()
        self.tolerance_spin.setRange(0.5, 6.0)
        self.tolerance_spin.setSingleStep(0.1)
        self.tolerance_spin.setValue(2.5)
        self.tolerance_spin.setToolTip("How far the intensity range reaches toward the neighbouring classes: 2.5 = where the click's "
                                       "class and its neighbour are equally likely, more takes more; Alt+wheel over the image changes it")
        self.negative_check = QCheckBox("Next click negative (T)")
        self.ring_check = QCheckBox("2 mm ring on commit (Correction layers)")
        self.ring_check.setToolTip("Committing into a Correction annotation also labels a 2 mm ring around the object (unlabelled "
                                   "voxels only) with the model's prediction there, or background without one: fine-tuning then "
                                   "learns the boundary from both sides")
        self.ring_check.setChecked(True)
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.undo_button, self.redo_button = QPushButton("Undo"), QPushButton("Redo")
        self.reset_button, self.commit_button = QPushButton("Reset object"), QPushButton("Commit")
        self.confirm_button = QPushButton("Confirm growth")
        self.confirm_button.hide()
        self.info_label = QLabel("")
        self.help_label = QLabel(HELP)
        self._fill_engines()
        self.start_button.clicked.connect(self.start_session)
        self.stop_button.clicked.connect(self.stop_session)
        self.undo_button.clicked.connect(lambda: self.request("undo"))
        self.redo_button.clicked.connect(lambda: self.request("redo"))
        self.reset_button.clicked.connect(lambda: self.request("reset_object"))
        self.commit_button.clicked.connect(self.commit)
        self.confirm_button.clicked.connect(lambda: self.request("confirm"))
        self.negative_check.toggled.connect(self._polarity_changed)
        self.tolerance_spin.valueChanged.connect(self._params_changed)
        self.class_combo.currentIndexChanged.connect(self._params_changed)
        self.class_spin.valueChanged.connect(self._params_changed)
        self.target_combo.currentIndexChanged.connect(self._target_changed)
        self.image_combo.currentIndexChanged.connect(self.refresh_layers)

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Target labels", self.target_combo)
        classes = QHBoxLayout()
        classes.addWidget(self.class_combo)
        classes.addWidget(self.class_spin)
        form.addRow("Class", classes)
        form.addRow("Engine", self.engine_combo)
        form.addRow("Tolerance", self.tolerance_spin)
        layout = QVBoxLayout(self)
        layout.addWidget(self.help_label)
        layout.addLayout(form)
        layout.addWidget(self.negative_check)
        layout.addWidget(self.ring_check)
        for pair in ((self.start_button, self.stop_button), (self.undo_button, self.redo_button),
                     (self.reset_button, self.commit_button)):
            row = QHBoxLayout()
            for b in pair:
                row.addWidget(b)
            layout.addLayout(row)
        layout.addWidget(self.confirm_button)
        layout.addWidget(self.info_label)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.make_scrollable()
        self._session_buttons(False)

    def _fill_engines(self) -> None:
        """The learned engine is offered only when enabled; the reason it is not is its tooltip."""
        try:
            from medloop.plugins.interactive.clicknet import learned_status

            enabled, reason = learned_status()
        except ImportError:
            enabled, reason = False, "the click network is not installed in this version"
        item = self.engine_combo.model().item(2)
        item.setEnabled(bool(enabled))
        self.learned_reason = "" if enabled else f"Learned engine disabled: {reason}"
        item.setToolTip(self.learned_reason or "the learned click network")
        self.engine_combo.setToolTip(self.learned_reason or "auto: the learned engine when enabled, else classical")

    def _session_buttons(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        for w in (self.undo_button, self.redo_button, self.reset_button, self.commit_button):
            w.setEnabled(running)
        for w in (self.image_combo, self.target_combo, self.engine_combo):
            w.setEnabled(not running)

    # -- choices -------------------------------------------------------------------------------
    def refresh_layers(self, *_: Any) -> None:
        """Offer the image layers and, as targets, every labels layer plus a new one."""
        for combo in (self.image_combo, self.target_combo):
            combo.blockSignals(True)
        try:
            self.offer_layers(self.image_combo, "image")
            current = self.target_combo.currentText()
            names = [layer.name for layer in self.viewer.layers
                     if layer._type_string == "labels" and not self._own_layer(layer.name)]
            image = self.image_combo.currentText()
            options = [*names, NEW_TARGET.format(image=image)] if image else names
            self.target_combo.clear()
            self.target_combo.addItems(options)
            if current in options:
                self.target_combo.setCurrentText(current)
            elif image and f"{image} annotations" in names:
                self.target_combo.setCurrentText(f"{image} annotations")
            else:
                self.target_combo.setCurrentText(options[-1] if options else "")
        finally:
            for combo in (self.image_combo, self.target_combo):
                combo.blockSignals(False)
        self._target_changed()
        b = self.bound
        if b is not None and any(layer not in self.viewer.layers for layer in (b.image_layer, b.target, b.prompts)):
            self.stop_session()
            self.status.setText("The session's layers were removed; the session stopped.")

    def _own_layer(self, name: str) -> bool:
        return name.endswith(" scribbles")

    def target_layer(self):
        name = self.target_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _target_changed(self, *_: Any) -> None:
        """The class comes from the target's legend when it has one, else from a value box."""
        layer = self.target_layer()
        legend = dict((layer.metadata.get(loop.CLASSES_KEY) or {}) if layer is not None else {})
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        for value, name in sorted((int(v), str(n)) for v, n in legend.items()):
            self.class_combo.addItem(f"{value} {name}", value)
        background = loop.background_value(layer.metadata) if layer is not None else None
        if legend:
            first = next((i for i in range(self.class_combo.count()) if self.class_combo.itemData(i) != background), 0)
            self.class_combo.setCurrentIndex(first)
        self.class_combo.blockSignals(False)
        self.class_combo.setVisible(bool(legend))
        self.class_spin.setVisible(not legend)

    def label_value(self) -> int:
        if self.class_combo.isVisible() or self.class_combo.count():
            data = self.class_combo.currentData()
            if data is not None:
                return int(data)
        return int(self.class_spin.value())

    def _show_label(self, value: int) -> None:
        """Show ``value`` as the chosen class (a restored open object's class)."""
        index = self.class_combo.findData(value)
        if self.class_combo.count() and index >= 0:
            self.class_combo.setCurrentIndex(index)
        elif not self.class_combo.count():
            self.class_spin.setValue(value)

    def params(self):
        from medloop.plugins.interactive.params import InteractiveParams

        return InteractiveParams(engine=self.engine_combo.currentText(), label=self.label_value(),
                                 tolerance=float(self.tolerance_spin.value())).validate()

    # -- starting and stopping -----------------------------------------------------------------
    def start_session(self) -> None:
        """Check the choices here; read the autosave and the prompt log in a worker; then make
        the layers and start the session's worker (which prepares the engine)."""
        if self.bound is not None or self.job is not None:
            return
        try:
            setup = self._setup()
        except (MedloopError, ValueError) as exc:
            self.refuse(exc)
            return
        self.status.setText(f"Preparing a session on {setup.image_name} …")
        self.start_button.setEnabled(False)

        def compute(progress, should_stop):
            from medloop.app.io.autosave import AnnotationStore
            from medloop.plugins.interactive.promptlog import PromptLogError, log_path_beside, read_log

            setup.store = AnnotationStore.for_image(setup.image)
            if setup.new_target:
                setup.saved = setup.store.load(setup.image, setup.target_name)
            setup.log_path = log_path_beside(setup.store.folder, setup.image, setup.target_name)
            if setup.log_path.is_file():
                try:
                    setup.rows = read_log(setup.log_path)
                except PromptLogError as exc:
                    setup.problem = f"The prompt log could not be restored ({exc}); a new one is started."
                    setup.log_path = setup.log_path.with_name(setup.log_path.name + f".{int(time.time())}.csv")
            return setup

        self.start(compute, self._if_alive(self._begin))

    def _setup(self) -> _Setup:
        from medloop.plugins.interactive.prompts import PromptError

        layer = self.image_layer()
        if layer is None:
            raise PromptError("Open an image first (File > Open Sample > medloop > brain T1).")
        if getattr(layer, "rgb", False) or layer.multiscale:
            raise PromptError(f"{layer.name} is a colour or multiscale image; click -> object needs a grey image.")
        image = layer_image(layer)
        target = self.target_layer()
        new = target is None
        name = f"{layer.name} objects" if new else target.name
        if not new:
            problem = loop.grid_mismatch(target.name, layer.name, _grid(target), _grid(layer))
            if problem:
                raise PromptError(problem)
        scribbles = f"{layer.name} scribbles"
        if scribbles in self.viewer.layers:
            problem = loop.grid_mismatch(scribbles, layer.name, _grid(self.viewer.layers[scribbles]), _grid(layer))
            if problem:
                raise PromptError(problem.replace("choose a labels layer made on that image", "delete or rename it and press Start again")
                                  .replace("The target", "The scribble layer"))
        return _Setup(layer.name, image, name, self.params(), new)

    def _begin(self, setup: _Setup) -> None:
        layer = self.viewer.layers[setup.image_name] if setup.image_name in self.viewer.layers else None
        if layer is None:
            self.status.setText(f"{setup.image_name} was closed; nothing started.")
            return
        target = self._make_target(setup, layer) if setup.new_target else self.viewer.layers[setup.target_name]
        setup.labels = target.data
        b = _Bound(setup, layer, target, *self._make_prompt_layers(setup, layer))
        b.scribbles_seen = np.zeros(b.scribbles.data.shape, bool)
        meta = target.metadata.get(loop.PROMPTS_KEY) or {}
        b.review_base = (int(meta.get("count", 0)), float(meta.get("seconds", 0.0)))
        from medloop.app.io.autosave import Autosaver

        b.saver = Autosaver(setup.store, setup.image, setup.target_name, partial(InteractivePanel._labels_to_save, b), delay=AUTOSAVE_DELAY_S)
        self.bound = b
        self._connect(b)
        b.runner = _Runner(setup, self._if_alive(self._on_info), self._if_alive(self._worker_failed), self._if_alive(self._worker_ended),
                           persist=partial(_persist_committed, b))
        self._session_buttons(True)
        self.target_combo.setCurrentText(target.name)  # a new target is now a layer
        self.viewer.layers.selection.active = b.prompts
        self.status.setText(f"Preparing the engine … then click an object in {setup.image_name}.")

    def _make_target(self, setup: _Setup, layer) -> Any:
        kwargs = setup.image.layer_kwargs()
        kwargs.pop("rgb", None)
        kwargs.pop("multiscale", None)
        shape = setup.image.shape[: setup.image.ndim]
        data = np.zeros(shape, np.uint16) if setup.saved is None else np.asarray(setup.saved).astype(np.uint16)
        from napari.utils.colormaps import CyclicLabelColormap

        colours = CyclicLabelColormap(colors=["transparent", *OBJECT_COLOURS])
        return self.viewer.add_labels(data, name=setup.target_name, opacity=0.6, colormap=colours,
                                      metadata={"medloop_image": setup.image.with_array(data)}, **kwargs)

    def _make_prompt_layers(self, setup: _Setup, layer) -> tuple[Any, Any, Any]:
        """The prompts (Points), prompt box (Shapes) and scribbles (Labels) layers on the
        image's grid (reused when they exist)."""
        from napari.utils.colormaps import DirectLabelColormap

        kwargs = setup.image.layer_kwargs()
        kwargs.pop("rgb", None)
        kwargs.pop("multiscale", None)
        ndim, name, layers = setup.image.ndim, setup.image_name, self.viewer.layers
        if f"{name} scribbles" not in layers:
            colours = DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: POSITIVE_COLOUR, 2: NEGATIVE_COLOUR})
            self.viewer.add_labels(np.zeros(setup.image.shape[:ndim], np.uint8), name=f"{name} scribbles",
                                   colormap=colours, opacity=0.8, **kwargs)
        if f"{name} prompt box" not in layers:
            self.viewer.add_shapes(None, ndim=ndim, name=f"{name} prompt box", edge_color=BOX_COLOUR,
                                   face_color="transparent", edge_width=float(min(setup.image.spacing)), **kwargs)
        if f"{name} prompts" not in layers:
            self.viewer.add_points(np.zeros((0, ndim)), name=f"{name} prompts", size=3.0 * max(setup.image.spacing),
                                   features={"positive": np.zeros(0, bool), "object": np.zeros(0, int)},
                                   border_color="white", border_width=0.1, canvas_size_limits=(8, 24),
                                   out_of_slice_display=False, **kwargs)
        prompts, box, scribbles = layers[f"{name} prompts"], layers[f"{name} prompt box"], layers[f"{name} scribbles"]
        prompts.mode, box.mode = "pan_zoom", "add_rectangle"
        prompts.current_face_color = POSITIVE_COLOUR
        scribbles.selected_label = 1
        return prompts, box, scribbles

    def _connect(self, b: _Bound) -> None:
        """Mouse, keys and layer events of the session's layers."""
        for layer in (b.prompts, b.image_layer):
            layer.mouse_drag_callbacks.append(self._on_drag)
            layer.mouse_wheel_callbacks.append(self._on_wheel)
        b.box.events.data.connect(self._box_changed)
        b.scribbles.events.paint.connect(self._scribble_painted)
        actions = {"polarity": self.toggle_polarity, "commit": self.commit, "next": self.next_object,
                   "reset": lambda: self.request("reset_object"), "undo": lambda: self.request("undo"),
                   "redo": lambda: self.request("redo"), "box": lambda: self.tool("box"),
                   "scribble": lambda: self.tool("scribble")}
        for layer in (b.prompts, b.image_layer, b.box, b.scribbles):
            for action, key in layer_keys(type(layer)).items():
                layer.bind_key(key, _key_action(actions[action]), overwrite=True)
                b.keys.append((layer, key))

    def stop_session(self) -> None:
        """Stop the worker, write what is pending, let go of the layers (they stay)."""
        b, self.bound = self.bound, None
        if b is None:
            return
        for layer in (b.prompts, b.image_layer):
            for callbacks, cb in ((layer.mouse_drag_callbacks, self._on_drag), (layer.mouse_wheel_callbacks, self._on_wheel)):
                if cb in callbacks:
                    callbacks.remove(cb)
        for layer, key in b.keys:
            layer.bind_key(key, None)
        b.box.events.data.disconnect(self._box_changed)
        b.scribbles.events.paint.disconnect(self._scribble_painted)
        if b.runner is not None:
            b.runner.stop()
        if b.saver is not None:
            b.saver.close()
        self._session_buttons(False)
        self.confirm_button.hide()
        self.status.setText("Session stopped; labels and prompt log are saved.")

    def job_finished(self) -> None:
        if self.bound is None:
            self._session_buttons(False)

    def _worker_failed(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        self.status.setText(f"Failed: {exc}")
        show_error(f"Click -> object: {exc}")

    def _worker_ended(self) -> None:
        if self.bound is not None and self.bound.runner is not None and not self.bound.runner.busy:
            self.stop_session()

    def busy(self) -> bool:
        """Whether a request is queued or being answered (tests and scripts wait on this)."""
        b = self.bound
        if self.job is not None:
            return True
        if b is None or b.runner is None:
            return False
        with b.runner.cond:
            queued = bool(b.runner.pending)
        return queued or b.answered < 0 or b.runner.serial > b.answered

    def _if_alive(self, callback):
        alive = self._alive

        def call(*args):
            if alive[0]:
                callback(*args)

        return call

    def release(self) -> None:
        self.stop_session()
        self._alive[0] = False

    # -- prompts from the mouse ----------------------------------------------------------------
    def _on_drag(self, layer, event):
        """A click (press and release at one place) adds a point: Shift+click a negative one,
        T flips the next. Drags pan as usual. 3-D rendering is refused."""
        if event.type != "mouse_press" or getattr(event, "button", 1) not in (1, None):
            return
        start = np.asarray(event.position, float)
        yield
        while event.type == "mouse_move":
            yield
        b = self.bound
        voxel = 0.5 * float(min(b.setup.image.spacing)) if b is not None else 0.5
        if np.linalg.norm(np.asarray(event.position, float) - start) > voxel:
            return  # a drag (pan, or rotate in 3-D), not a click
        shift = any(str(m) == "Shift" or m == "Shift" for m in (event.modifiers or ()))
        self.click(event.position, positive=(shift == self.negative_next))

    def click(self, world_position, positive: bool = True) -> None:
        """A point prompt at a world position (as a mouse click gives it)."""
        from medloop.plugins.interactive.prompts import Point, index_to_physical

        b = self.bound
        if b is None:
            return
        if self.viewer.dims.ndisplay == 3:
            self.status.setText(REFUSED_3D)
            return
        index = np.asarray(b.image_layer.world_to_data(world_position), float)[-b.setup.image.ndim:]
        shape = np.asarray(b.setup.image.shape[: b.setup.image.ndim])
        if np.any(np.rint(index) < 0) or np.any(np.rint(index) >= shape):
            self.status.setText("The click is outside the image; click on the object.")
            return
        xyz = tuple(float(v) for v in index_to_physical(b.setup.image, np.rint(index))[0])
        serial = self._submit_prompt(Point(xyz, positive))
        if serial:
            b.pending[serial] = (np.rint(index), positive)
            self._show_points(b)

    def _submit_prompt(self, prompt) -> int:
        b = self.bound
        if b is None or b.runner is None:
            return 0
        if b.first_prompt is None:
            b.first_prompt = time.monotonic()
        serial = b.runner.submit("prompt", prompt)
        for old in b.runner.replaced & set(b.pending):  # queued clicks the new one replaced
            b.pending.pop(old, None)
        return serial

    def _box_changed(self, event: Any = None) -> None:
        """A finished rectangle in the box layer is a Box prompt on the displayed slice."""
        from medloop.plugins.interactive.prompts import Box, index_to_physical

        b = self.bound
        action = str(getattr(getattr(event, "action", None), "value", getattr(event, "action", ""))).lower()
        if b is None or action != "added" or not len(b.box.data):
            return
        corners = np.asarray(b.box.data[-1], float)[:, -b.setup.image.ndim:]
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        plane = None
        if b.setup.image.ndim == 3:
            shown = set(self.viewer.dims.displayed[-2:])
            hidden = [a for a in range(self.viewer.dims.ndim) if a not in shown]
            plane = hidden[-1] - (self.viewer.dims.ndim - 3)
        mm = index_to_physical(b.setup.image, np.stack([lo, hi]))
        self._submit_prompt(Box((tuple(map(float, mm[0])), tuple(map(float, mm[1]))), plane))
        self.status.setText("Box sent; the object is computed …")

    def _scribble_painted(self, event: Any = None) -> None:
        """A finished stroke in the scribbles layer: its new voxels (1 positive, 2 negative),
        read once napari has written them (its paint event may come before the write)."""
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, self._read_scribbles)

    def _read_scribbles(self) -> None:
        from medloop.plugins.interactive.prompts import Scribble, index_to_physical

        b = self.bound
        if b is None:
            return
        data = np.asarray(b.scribbles.data)
        for value, positive in ((1, True), (2, False)):
            new = (data == value) & ~b.scribbles_seen
            if new.any():
                mm = index_to_physical(b.setup.image, np.argwhere(new))
                self._submit_prompt(Scribble(tuple(tuple(map(float, p)) for p in mm), positive))
        b.scribbles_seen = data > 0

    def _on_wheel(self, layer, event) -> None:
        """Alt+wheel: tolerance up or down by 0.1 (for the next prompt)."""
        if not any(str(m) == "Alt" or m == "Alt" for m in (event.modifiers or ())):
            return
        delta = float(np.asarray(getattr(event, "delta", (0, 0)))[-1])
        if delta:
            self.tolerance_spin.setValue(self.tolerance_spin.value() + (0.1 if delta > 0 else -0.1))
            event.handled = True

    # -- actions -------------------------------------------------------------------------------
    def request(self, kind: str) -> None:
        """undo, redo, reset_object or confirm, run by the session's worker in order."""
        b = self.bound
        if b is not None and b.runner is not None:
            b.runner.submit(kind)

    def tool(self, kind: str) -> None:
        """B / S: draw a box or scribble on the displayed slice; the same key again goes back to
        clicking (the prompts layer)."""
        b = self.bound
        if b is None:
            return
        layer, mode = (b.box, "add_rectangle") if kind == "box" else (b.scribbles, "paint")
        if self.viewer.layers.selection.active is layer:
            self.viewer.layers.selection.active = b.prompts
            self.status.setText("Click the object (Shift+click: negative).")
            return
        self.viewer.layers.selection.active = layer
        layer.mode = mode
        if kind == "scribble":
            layer.selected_label = 2 if self.negative_next else 1
        what = "Drag a rectangle around the object" if kind == "box" else "Paint over the object (label 1 positive, 2 negative)"
        self.status.setText(f"{what} on this slice.")

    def toggle_polarity(self) -> None:
        self.negative_check.setChecked(not self.negative_check.isChecked())

    def _polarity_changed(self, negative: bool) -> None:
        self.negative_next = bool(negative)
        self.status.setText(f"Next click: {'negative' if negative else 'positive'} (Shift+click for the other).")

    def commit(self) -> None:
        """Write the object as the chosen class; a Correction layer also gets a background ring."""
        b = self.bound
        if b is None or b.runner is None:
            return
        ring = None
        if self.ring_check.isChecked() and loop.is_correction_target(b.target.name, b.target.metadata):
            ring = self._ring(b)
        b.runner.submit("commit", ring)

    def _ring(self, b: Any) -> Any:
        """The ring of a Correction target: the classes of the model's prediction layer
        (``<image> prediction``) where it has one, else background (spec §4.6)."""
        from medloop.plugins.interactive.session import Ring

        offset = loop.background_value(b.target.metadata)
        if offset is None:
            return None
        prediction = None
        name = f"{b.setup.image_name} prediction"
        if name in self.viewer.layers and self.viewer.layers[name].data.shape == b.target.data.shape:
            data = np.asarray(self.viewer.layers[name].data)
            prediction = data if data.any() else None
        label = self.label_value()
        return Ring(class_index=int(label) - offset, mm=b.setup.params.ring_mm, prediction=prediction, offset=offset)

    def next_object(self) -> None:
        """N: commit the current object (if any) and start the next one."""
        self.commit()

    def _params_changed(self, *_: Any) -> None:
        b = self.bound
        if b is None or b.runner is None:
            return
        try:
            b.runner.submit("params", self.params())
        except MedloopError as exc:
            self.refuse(exc)

    # -- results from the worker ---------------------------------------------------------------
    def _on_info(self, info: dict) -> None:
        b = self.bound
        kind = info.get("kind")
        if kind == "write":
            try:
                if b is not None:
                    self._apply(b, info["update"], info["open"])
            finally:
                info["ack"].set()
            return
        if b is None:
            return
        if kind == "ready":
            b.answered = 0
            restored = info.get("restored", 0)
            text = f"Ready ({self._engine_name()}): click an object in {b.setup.image_name}."
            if restored:
                self._show_label(int(info["snapshot"]["label"]))
            if b.setup.rows:
                text = (f"Restored {info['snapshot']['committed']} committed objects (in the autosaved labels) and the open "
                        f"object's {restored} prompts from {b.setup.log_path.name}. " + text)
            self.status.setText(" ".join(t for t in (b.setup.problem, text) if t))
        elif kind == "refused":
            b.answered = max(b.answered, info["serial"])
            self.status.setText(f"Cannot use that prompt: {info['message']}")
        elif kind == "done":
            b.answered = max(b.answered, info["serial"])
            self._done(b, info)
        if "snapshot" in info:
            b.snapshot = info["snapshot"]
            with b.open_lock:
                b.snapshot_open = info["snapshot"]["open"]
            for serial in [s for s in b.pending if s <= b.answered or s in b.runner.replaced]:
                b.pending.pop(serial)
            self._show_points(b)
            self._show_info(b)
            b.saver.changed()  # the labels without the open object (which lives in the prompt log)

    def _apply(self, b: _Bound, update: Any, open_crop: Any) -> None:
        """Write one diff: only its voxels, and only where nobody painted since it was computed
        (one napari history step); the open object's crop changes with it, under the lock the
        autosave copies under (a copy between the two would save the open object, which the
        restore then replays on top of itself)."""
        with b.open_lock:
            b.snapshot_open = open_crop
            if not update.changed:
                return
            layer = b.target
            current = np.asarray(layer.data[update.index])
            keep = current == update.before
            index = tuple(ix[keep] for ix in update.index)
            if index[0].size:
                layer.data_setitem(index, update.after[keep])
        b.applied += 1

    def _done(self, b: _Bound, info: dict) -> None:
        update, request = info.get("update"), info.get("request")
        if update is None:
            return
        if update.info:
            self.last_info = dict(update.info)
        if request == "commit":
            self._clear_prompts(b)
        waiting = bool(update.info.get("needs_confirmation")) or info["snapshot"]["waiting"]
        self.confirm_button.setVisible(waiting)
        self.status.setText(update.message or request)
        if loop.is_review_mask(b.target.name):
            self._record_review(b, info["snapshot"])

    def _record_review(self, b: _Bound, snapshot: dict) -> None:
        """Review's audit log reads the prompt count and the seconds spent on its mask."""
        count, seconds = b.review_base
        spent = 0.0 if b.first_prompt is None else time.monotonic() - b.first_prompt
        b.target.metadata[loop.PROMPTS_KEY] = {"count": count + int(snapshot["prompts"]), "seconds": round(seconds + spent, 1)}

    def _clear_prompts(self, b: _Bound) -> None:
        """After a commit: the box and scribbles of the committed object go away."""
        if len(b.box.data):
            b.box.events.data.disconnect(self._box_changed)
            try:
                b.box.data = []
            finally:
                b.box.events.data.connect(self._box_changed)
        if b.scribbles_seen.any():
            b.scribbles.data[...] = 0
            b.scribbles.refresh()
            b.scribbles_seen[...] = False

    def _show_points(self, b: _Bound) -> None:
        """The open object's points (answered and still queued), green positive, red negative."""
        shown = list(b.snapshot.get("points", [])) + list(b.pending.values())
        ndim = b.setup.image.ndim
        data = np.array([p for p, _ in shown], float).reshape(-1, ndim)
        positive = np.array([bool(q) for _, q in shown], bool)
        if data.shape == b.prompts.data.shape and np.array_equal(data, b.prompts.data) and \
                np.array_equal(positive, b.prompts.features.get("positive", np.zeros(0, bool)).to_numpy(bool)):
            return
        with b.prompts.events.blocker_all():
            b.prompts.data = data
            b.prompts.features = {"positive": positive, "object": np.full(len(data), int(b.snapshot.get("object", 1)))}
            if len(data):
                b.prompts.face_color = [POSITIVE_COLOUR if q else NEGATIVE_COLOUR for q in positive]
            b.prompts.selected_data = set()
        b.prompts.refresh()

    def _show_info(self, b: _Bound) -> None:
        """Engine, method, ROI (voxels and mm), zoom, latency, object size."""
        i, snap = self.last_info, b.snapshot
        spacing = np.asarray(b.setup.image.spacing[::-1], float)
        unit = getattr(b.setup.image, "unit", "mm")
        lines = [f"Engine: {i.get('engine', self._engine_name())}" + (f", {i['method']}" if i.get("method") else "")]
        if i.get("roi"):
            size = np.array([hi - lo for lo, hi in i["roi"]])
            lines.append(f"ROI: {'x'.join(map(str, size))} voxels ({' x '.join(f'{v:.0f}' for v in size * spacing)} {unit}), "
                         f"zoom {i.get('zoom', 1):g}")
        if "ms" in i:
            lines.append(f"Last prompt: {i['ms']:.0f} ms")
        vox = int(snap.get("voxels", 0))
        volume = vox * float(np.prod(spacing))
        size = f"{volume / 1000:.2f} mL" if unit == "mm" and len(spacing) == 3 else f"{volume:.0f} {unit}{'³' if len(spacing) == 3 else '²'}"
        lines.append(f"Object {snap.get('object', 1)}: {vox} voxels ({size}); committed objects: {snap.get('committed', 0)}")
        lines.append(f"Next click: {'negative' if self.negative_next else 'positive'}")
        self.info_label.setText("<br>".join(lines))

    def _engine_name(self) -> str:
        b = self.bound
        return b.setup.params.engine if b is not None else self.engine_combo.currentText()

    @staticmethod
    def _labels_to_save(b: _Bound) -> np.ndarray:
        """The autosave's copy of the target: the open object's voxels hold what was there
        before it (it is restored from the prompt log), committed objects are kept."""
        with b.open_lock:  # the labels and the open object's crop of one moment
            labels = np.array(b.target.data, copy=True)
            crop = b.snapshot_open
        if crop is not None:
            roi, mask, base = crop
            view = labels[roi]
            view[mask] = base[mask]
        return labels


def _grid(layer) -> dict[str, Any]:
    return {"shape": np.shape(layer.data), "scale": layer.scale, "translate": layer.translate,
            "affine": layer.affine.affine_matrix}


def _key_action(action: Callable[[], None]) -> Callable[[Any], None]:
    def run(layer) -> None:
        action()

    return run


def _persist_committed(b: _Bound) -> None:
    """At a commit, in the session's worker: the object is no longer open, so the labels are
    saved now with it, before the prompt log records the commit (a kill -9 within the autosave
    delay would otherwise leave a log whose commit the labels lack, and the restore trusts it)."""
    with b.open_lock:
        b.snapshot_open = None
    b.saver.changed()
    b.saver.flush()
