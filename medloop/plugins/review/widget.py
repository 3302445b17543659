"""Review panel: a case queue (most uncertain first), accept / reject / edit with napari's label
tools and medloop's mask tools, comments (free text and pinned to a location), every decision in
the project's append-only audit log, in-progress edits autosaved and restored.

All review logic lives in :mod:`medloop.plugins.review.project` (Qt-free); this panel only shows a
case's layers and turns button presses into :meth:`ReviewProject.decide` calls.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QSettings, Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from medloop.app.errors import MedloopError
from medloop.app.gui.class_list import ClassList
from medloop.app.gui.layers import class_layer_kwargs
from medloop.app.gui.panel import MethodPanel
from medloop.app.gui.mask_tools import MaskToolsBox

if TYPE_CHECKING:
    import napari

COLUMNS = ["case", "status", "uncertainty", "minutes"]
FILTERS = ["all", "to review", "accepted", "rejected", "edited", "second opinion"]
SETTINGS_KEY = "review/reviewer"
#: The identity value of each geometry attribute, for a reused layer whose new case has none.
_IDENTITY = {
    "scale": lambda n: np.ones(n),
    "translate": lambda n: np.zeros(n),
    "affine": lambda n: np.eye(n + 1),
}


class ReviewPanel(MethodPanel):
    """Walk a review project's cases; every verdict goes to the audit log. Making a project with
    a model is this panel's background job (progress, Cancel, status line: MethodPanel's)."""

    cancelled_message = "Cancelled; no project was made."

    def __init__(self, napari_viewer: "napari.Viewer", settings: QSettings | None = None) -> None:
        super().__init__(napari_viewer)
        self.settings = settings if settings is not None else QSettings("medloop", "medloop")
        self.project = None
        self.case_id: str | None = None
        self.opened_at = 0.0
        self.saver = None
        self.layers: dict[str, Any] = {}
        self._reader = None  # a one-thread pool that reads cases ahead (see prefetch)
        self._prefetched: dict[tuple[str, str], Any] = {}

        self._build_controls()
        self._build_layout()
        self._connect_signals()
        self._enable(False)

    def _build_controls(self) -> None:
        """The project buttons, reviewer, filter, case table, navigation, comment, verdicts,
        outputs and mask tools."""
        self.open_button = QPushButton("Open review project …")
        self.new_button = QPushButton("New project from images …")
        self.new_button.setToolTip("Run a model over images and make a review project of its predictions")
        self.start_buttons = [self.new_button, self.open_button]
        self.project_label = QLabel("No project open.")
        self.project_label.setWordWrap(True)
        self.reviewer_edit = QLineEdit(str(self.settings.value(SETTINGS_KEY, "") or ""))
        self.reviewer_edit.setPlaceholderText("your name (kept in the audit log)")
        self.reviewer_hint = QLabel("")  # why a name is refused, as it is typed
        self.reviewer_hint.setWordWrap(True)
        self.reviewer_hint.setStyleSheet("color: #d55e00")
        self.filter_combo = QComboBox()
        self.filter_combo.addItems(FILTERS)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSortingEnabled(True)
        self.table.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)  # queue order
        self.table.setMinimumHeight(140)  # five cases visible, however crowded the dock
        self.user_sort: tuple[int, Qt.SortOrder] | None = None  # a column the user sorted by
        self._sorting = False
        self.queue_button = QPushButton("Uncertain first")
        self.queue_button.setToolTip("Show the queue in review order again (after sorting by a column)")
        self.case_label = QLabel("")  # the open case and its verdict, whatever opens next
        self.case_label.setWordWrap(True)
        self.history_list = QListWidget()  # the open case's earlier decisions and comments
        self.history_list.setMaximumHeight(80)
        self.history_list.setWordWrap(True)
        self.pin_edit = QLineEdit()
        self.pin_edit.setPlaceholderText("text of the next comment pin (add points to the comments layer)")
        self.prev_button = QPushButton("◀ Previous")
        self.next_button = QPushButton("Next ▶")
        self.comment_edit = QPlainTextEdit()
        self.comment_edit.setPlaceholderText("Comment on this case (saved with the decision)")
        self.comment_edit.setMaximumHeight(70)
        self.accept_button = QPushButton("Accept")
        self.edit_button = QPushButton("Save edit")
        self.reject_button = QPushButton("Reject")
        self.second_button = QPushButton("Second opinion")
        self.export_button = QPushButton("Export accepted masks")
        self.report_button = QPushButton("Write report")
        self.tools = MaskToolsBox(self.viewer, on_edit=lambda layer: self._mask_changed())
        self.class_list = ClassList(self.viewer)

    def _build_layout(self) -> None:
        """Project buttons and job row on top, then the form, the case table, navigation,
        comment, verdict buttons, status, mask tools and outputs."""
        form = QFormLayout()
        form.addRow("Reviewer", self.reviewer_edit)
        form.addRow("", self.reviewer_hint)
        show_row = QHBoxLayout()
        show_row.addWidget(self.filter_combo, 1)
        show_row.addWidget(self.queue_button)
        form.addRow("Show", show_row)
        nav = QHBoxLayout()
        nav.addWidget(self.prev_button)
        nav.addWidget(self.next_button)

        verdicts = QGridLayout()
        for i, b in enumerate((self.accept_button, self.edit_button, self.reject_button, self.second_button)):
            verdicts.addWidget(b, i // 2, i % 2)
        outputs = QHBoxLayout()
        outputs.addWidget(self.export_button)
        outputs.addWidget(self.report_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.open_button)
        layout.addWidget(self.new_button)
        job_row = QHBoxLayout()
        job_row.addWidget(self.progress)
        job_row.addWidget(self.cancel_button)
        layout.addLayout(job_row)
        layout.addWidget(self.project_label)
        layout.addLayout(form)
        layout.addWidget(self.table)
        layout.addLayout(nav)
        layout.addWidget(self.case_label)
        layout.addWidget(QLabel("Earlier decisions on this case:"))
        layout.addWidget(self.history_list)
        layout.addWidget(self.comment_edit)
        pin_row = QFormLayout()
        pin_row.addRow("Pin text", self.pin_edit)
        layout.addLayout(pin_row)
        layout.addLayout(verdicts)
        layout.addWidget(self.status)
        layout.addWidget(self.class_list)
        layout.addWidget(self.tools)
        layout.addLayout(outputs)
        self.make_scrollable()

    def _connect_signals(self) -> None:
        """Buttons, table, filter and reviewer field to their actions; Shift-Right / Shift-Left
        step through the cases."""
        self.open_button.clicked.connect(self._choose_project)
        self.new_button.clicked.connect(self._new_project_dialog)
        self.filter_combo.currentIndexChanged.connect(self.refresh_table)
        self.table.cellDoubleClicked.connect(lambda row, _: self.open_case(self.table.item(row, 0).text()))
        self.prev_button.clicked.connect(lambda: self.step(-1))
        self.next_button.clicked.connect(lambda: self.step(+1))
        self.accept_button.clicked.connect(lambda: self.decide("accept"))
        self.edit_button.clicked.connect(lambda: self.decide("edit"))
        self.reject_button.clicked.connect(lambda: self.decide("reject"))
        self.second_button.clicked.connect(lambda: self.decide("second_opinion"))
        self.export_button.clicked.connect(self.export)
        self.report_button.clicked.connect(self.report)
        self.reviewer_edit.editingFinished.connect(self._remember_reviewer)
        self.reviewer_edit.textChanged.connect(self._check_reviewer_field)
        self.table.horizontalHeader().sortIndicatorChanged.connect(self._sort_changed)
        self.queue_button.clicked.connect(self.queue_order)
        self.pin_edit.textChanged.connect(self._pin_text_changed)
        for key, step in (("Shift-Right", +1), ("Shift-Left", -1)):
            self.viewer.bind_key(key, lambda viewer, step=step: self.step(step), overwrite=True)

    # -- project ------------------------------------------------------------------------------
    def _choose_project(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open review project")
        if folder:
            self.open_project(folder)

    def _new_project_dialog(self) -> None:
        from medloop.models.registry import list_models

        images, _ = QFileDialog.getOpenFileNames(self, "Images to review (one case each)")
        if not images:
            return
        names = [m.name for m in list_models()]
        model, ok = QInputDialog.getItem(self, "Model", "Segment the images with:", names, 0, False)
        if not ok:
            return
        folder = QFileDialog.getSaveFileName(self, "New review project folder")[0]
        if folder:
            self.new_project(folder, [Path(p) for p in images], model)

    def new_project(self, folder: str | Path, images: list[Path], model: str, models_dir: Path | None = None) -> None:
        """Create a project by running ``model`` over ``images`` (a background job with
        progress and Cancel; a cancelled run leaves no project), then open it."""
        from medloop.plugins.review.project import ReviewProject

        if self.job is not None:
            return
        reviewer = self.reviewer()
        self.status.setText(f"Segmenting {len(images)} image(s) with {model} ...")

        def compute(progress, should_stop):
            return ReviewProject.create_with_model(
                folder, images, model, models_dir=models_dir, created_by=reviewer, progress=progress,
                should_stop=should_stop,
            )

        def on_info(info: dict) -> None:
            if "case" in info:
                self.status.setText(f"Segmenting: {info['done']} / {info['total']} ({info['case']}) ...")

        def done(project) -> None:
            self.open_project(project.folder)
            self.status.setText(f"Made {Path(folder).name} with {model}: {len(project.cases)} case(s), most uncertain first.")

        self.start(compute, on_done=done, on_info=on_info)

    def refresh_layers(self, *_: Any) -> None:
        """Review picks cases, not image layers: nothing to offer."""

    def open_project(self, folder: str | Path) -> None:
        """Open a project made by ``medloop review init``; reports a torn audit log tail."""
        from napari.utils.notifications import show_error, show_warning

        from medloop.plugins.review.project import ReviewProject

        try:
            project = ReviewProject.open(folder)
            project.clean_stale_temps()
            state = project.state()
        except MedloopError as exc:
            show_error(str(exc))
            return
        self.close_case()
        self.project = project
        self._show_counts(state)
        if state.problems:
            show_warning(f"the audit log has {len(state.problems)} unreadable line(s) (a crash mid-write?); they are ignored, nothing else was lost")
        self.refresh_table()
        self._enable(True)
        name = self.reviewer_edit.text().strip()
        if name and self._check_reviewer_field(name) and self.visible_cases():
            self.prefetch(self.visible_cases()[:1], name)  # the first case of the queue, read ahead

    def _show_counts(self, state) -> None:
        """The header: "N cases (a to review, b accepted, ...)", after every decision too."""
        counts = ", ".join(f"{n} {s}" for s, n in state.counts().items() if n)
        self.project_label.setText(f"{self.project.folder.name}: {len(self.project.cases)} cases ({counts}).")

    def _check_reviewer_field(self, text: str) -> bool:
        """Say under the field why a reviewer name is refused, while it is typed."""
        from medloop.plugins.review.project import reviewer_problem

        problem = reviewer_problem(text.strip()) if text.strip() else None
        self.reviewer_hint.setText("" if problem is None else f"This name cannot be used: {problem}.")
        self.reviewer_hint.setVisible(problem is not None)
        return problem is None

    def reviewer(self) -> str | None:
        """The reviewer's name: from the settings, asked once if unknown."""
        from medloop.plugins.review.project import check_reviewer

        name = self.reviewer_edit.text().strip()
        if not name:
            name, ok = QInputDialog.getText(self, "Reviewer", "Your name, as it should appear in the audit log:")
            name = name.strip() if ok else ""
            self.reviewer_edit.setText(name)
        if not name:
            return None
        check_reviewer(name)
        self._remember_reviewer()
        return name

    def _remember_reviewer(self) -> None:
        if self._check_reviewer_field(self.reviewer_edit.text()):
            self.settings.setValue(SETTINGS_KEY, self.reviewer_edit.text().strip())

    # -- the case list ------------------------------------------------------------------------
    def refresh_table(self, *_: Any) -> None:
        """Cases most uncertain first (or as the user last sorted them by a column), with their
        status and who gave it; the filter hides the others."""
        if self.project is None:
            return
        state = self.project.state()
        self._show_counts(state)
        wanted = self.filter_combo.currentText()
        self._sorting = True
        self.table.setSortingEnabled(False)
        self.table.setRowCount(0)
        for case in self.project.cases_sorted("uncertainty", state):
            cs = state.cases[case.id]
            if wanted != "all" and cs.status != wanted:
                continue
            row = self.table.rowCount()
            self.table.insertRow(row)
            score = case.uncertainty_score
            verdict = cs.verdict()
            status = cs.status + (f" ({verdict.reviewer})" if verdict is not None and cs.status == verdict.status else "")
            items = [case.id, status, "" if score is None else f"{score:.3f}", f"{cs.seconds / 60:.1f}"]
            for col, text in enumerate(items):
                item = QTableWidgetItem()
                if col in (2, 3) and text:
                    item.setData(Qt.ItemDataRole.DisplayRole, float(text))  # numeric sort
                else:
                    item.setText(text)
                self.table.setItem(row, col, item)
        header = self.table.horizontalHeader()
        if self.user_sort is None:
            header.setSortIndicator(-1, Qt.SortOrder.AscendingOrder)  # keep the queue order
        else:
            header.setSortIndicator(*self.user_sort)
        self.table.setSortingEnabled(True)
        self._sorting = False
        self._select_current()

    def _sort_changed(self, column: int, order: Qt.SortOrder) -> None:
        """The user sorted by a column: keep that order across refreshes (Next follows it)."""
        if not self._sorting:
            self.user_sort = None if column < 0 else (column, order)

    def queue_order(self) -> None:
        """Back to the review order: most uncertain first."""
        self.user_sort = None
        self.refresh_table()

    def visible_cases(self) -> list[str]:
        return [self.table.item(r, 0).text() for r in range(self.table.rowCount())]

    def _select_current(self) -> None:
        for r, cid in enumerate(self.visible_cases()):
            if cid == self.case_id:
                self.table.selectRow(r)

    def step(self, direction: int) -> None:
        """Open the next (``+1``) or previous (``-1``) case of the list as shown."""
        cases = self.visible_cases()
        if not cases:
            return
        i = cases.index(self.case_id) + direction if self.case_id in cases else (0 if direction > 0 else len(cases) - 1)
        if 0 <= i < len(cases):
            self.open_case(cases[i])

    # -- one case -----------------------------------------------------------------------------
    def open_case(self, case_id: str) -> None:
        """Show the case's image, its prediction as an editable review mask (or the autosaved
        edit), the reference and the uncertainty map, all with their exact geometry.

        The case is read in the background ahead of time (the neighbours of the open case in the
        list as shown, and the first cases when a project opens), so Next and Previous only swap
        the data into the layers, which are reused from case to case."""
        from napari.utils.notifications import show_error

        if self.project is None:
            return
        try:
            reviewer = self.reviewer()
            if reviewer is None:
                return
            data = self._take_prefetched(case_id, reviewer)
        except MedloopError as exc:
            show_error(str(exc))
            return
        if self.saver is not None:  # the edit of the case being left is saved first
            self.saver.close()
            self.saver = None
        self.case_id = case_id
        self._show_layers(data)
        mask = self.layers["mask"]
        self.saver = self.project.autosaver(case_id, reviewer, lambda: mask.data)
        self.viewer.layers.selection.active = mask
        self.tools.select_layer(mask.name)
        state = self.project.state().cases[case_id]
        self.comment_edit.setPlainText("")
        self._pin_text_changed(self.pin_edit.text())
        self.opened_at = time.monotonic()
        restored = " Restored your unsaved edit." if data.draft is not None else ""
        self.status.setText(f"{case_id}: {state.status}.{restored}")
        self._show_case(state)
        self._select_current()
        self._prefetch_neighbours(reviewer)

    # -- reading ahead --------------------------------------------------------------------------
    def _take_prefetched(self, case_id: str, reviewer: str):
        """The case's data: from the read-ahead when it has it (waiting for it if it is still
        reading), else read now."""
        from medloop.plugins.review.case_data import load_case

        future = self._prefetched.pop((case_id, reviewer), None)
        if future is not None:
            return future.result()  # raises what load_case raised
        return load_case(self.project, case_id, reviewer)

    def prefetch(self, case_ids: list[str], reviewer: str) -> None:
        """Read these cases in a background thread (at most a few kept; others are dropped)."""
        from concurrent.futures import ThreadPoolExecutor

        from medloop.plugins.review.case_data import load_case

        if self._reader is None:
            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medloop-review-read")
        wanted = {(c, reviewer) for c in case_ids if c != self.case_id}
        for key in [k for k in self._prefetched if k not in wanted]:
            self._prefetched.pop(key).cancel()
        project = self.project
        for key in sorted(wanted - set(self._prefetched), key=lambda k: case_ids.index(k[0])):
            self._prefetched[key] = self._reader.submit(load_case, project, *key)

    def _prefetch_neighbours(self, reviewer: str) -> None:
        cases = self.visible_cases()
        if self.case_id in cases:
            i = cases.index(self.case_id)
            self.prefetch([c for c in (cases[i + 1:i + 2] + cases[max(i - 1, 0):i])], reviewer)

    def _forget_prefetched(self) -> None:
        for future in self._prefetched.values():
            future.cancel()
        self._prefetched.clear()

    # -- the case's layers, reused from case to case ----------------------------------------------
    def _show_layers(self, data) -> None:
        """Put the case's arrays into the panel's layers: new ones the first time, the same ones
        (data, name and grid swapped) afterwards."""
        image, cid = data.image, data.case_id
        kwargs = image.layer_kwargs()
        label_kwargs = {k: v for k, v in kwargs.items() if k != "rgb"}
        self.prediction = np.asarray(data.prediction.array)
        mask_data = (data.draft if data.draft is not None else self.prediction).astype(np.int32)
        classes = data.classes
        if not classes:  # model not installed: the class numbers still get the one table's colours
            from medloop.app.io.classes import default_classes

            classes = default_classes(np.union1d(np.unique(self.prediction), np.unique(mask_data)))
        mask_style = class_layer_kwargs(classes)
        mask_style["metadata"]["medloop_image"] = data.prediction
        self._put("image", "image", image.layer_data(), f"{cid} image", kwargs,
                  metadata={"medloop_image": image})
        self._put("mask", "labels", mask_data.copy(), f"{cid} review mask", label_kwargs, opacity=0.5, **mask_style)
        # The reference: the same class table, drawn as outlines and hidden at first, never
        # mistaken for the mask.
        self._put("reference", "labels", data.reference, f"{cid} reference", label_kwargs, visible=False, opacity=0.8,
                  contour=1, **class_layer_kwargs(classes))
        self._put("uncertainty", "image", data.uncertainty, f"{cid} uncertainty", label_kwargs, colormap="inferno",
                  opacity=0.5, blending="additive", contrast_limits=(0, 1), visible=False)
        self._put_pins(cid, image.ndim, label_kwargs)

    def _put(self, key: str, kind: str, data: Any, name: str, grid: dict[str, Any], **props: Any) -> None:
        """Layer ``key`` shows ``data`` (None: the layer goes) on ``grid`` (scale/translate/affine)."""
        layer = self.layers.get(key)
        reusable = layer is not None and layer in self.viewer.layers and layer._type_string == kind and (
            data is not None and layer.data.ndim == np.ndim(data) and layer.rgb == grid.get("rgb", False)
            if kind == "image" else data is not None and layer.data.ndim == np.ndim(data)
        )
        if layer is not None and not reusable and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)
        if data is None:
            self.layers.pop(key, None)
            return
        if not reusable:
            add = self.viewer.add_labels if kind == "labels" else self.viewer.add_image
            contour = props.pop("contour", None)
            layer = self.layers[key] = add(data, name=name, **grid, **props)
            if contour is not None:
                layer.contour = contour
            if key == "mask":
                layer.events.paint.connect(lambda *_: self._mask_changed())
                layer.events.data.connect(lambda *_: self._mask_changed())
            return
        for attr in ("scale", "translate", "affine"):  # the grid first, then the data: one redraw
            setattr(layer, attr, grid.get(attr, _IDENTITY[attr](layer.ndim)))
        layer.data = data
        layer.name = name
        for attr in ("metadata", "colormap", "features"):
            if attr in props:
                setattr(layer, attr, props[attr])
        if kind == "image" and "contrast_limits" not in props:
            layer.reset_contrast_limits()

    def _put_pins(self, cid: str, ndim: int, grid: dict[str, Any]) -> None:
        layer = self.layers.get("pins")
        if layer is not None and layer in self.viewer.layers and layer.ndim == ndim:
            for attr in ("scale", "translate", "affine"):
                setattr(layer, attr, grid.get(attr, _IDENTITY[attr](ndim)))
            layer.data = np.zeros((0, ndim))
            layer.name = f"{cid} comments"
            return
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)
        self.layers["pins"] = self.viewer.add_points(
            np.zeros((0, ndim)), name=f"{cid} comments", face_color="#f0e442", size=4,
            features={"text": np.array([], dtype=object)}, text={"string": "{text}", "color": "#f0e442", "anchor": "upper_left"},
            ndim=ndim, **grid,
        )
        self.layers["pins"].events.data.connect(self._pin_added)

    def _show_case(self, state) -> None:
        """The per-case line (status and verdict) and the list of earlier decisions, comments
        and pins of the open case."""
        verdict = state.verdict()
        line = f"Open: {state.case_id} — {state.status}"
        if verdict is not None:
            line += f" (last verdict: {verdict.action} by {verdict.reviewer}, {verdict.time})"
        self.case_label.setText(line + ".")
        self.history_list.clear()
        for d in state.history:
            text = f"{d.time}  {d.reviewer}: {d.action}"
            if d.comment:
                text += f" — “{d.comment}”"
            for pin in d.pins:
                text += f" [pin: {pin.get('text') or '(no text)'}]"
            self.history_list.addItem(text)
        if not state.history:
            self.history_list.addItem("(none yet)")

    def _pin_text_changed(self, text: str) -> None:
        """New pins take their text from the pin field."""
        layer = self.layers.get("pins")
        if layer is not None:
            layer.feature_defaults = {"text": text.strip()}

    def _pin_added(self, event: Any = None) -> None:
        """A pin placed with no text gets the field's text."""
        if getattr(event, "action", "added") != "added":
            return
        layer = self.layers.get("pins")
        text = self.pin_edit.text().strip()
        if layer is None or not text or not len(layer.data) or "text" not in layer.features:
            return
        values = layer.features["text"]
        for i, v in enumerate(values):
            if not isinstance(v, str) or not v.strip():
                layer.features.loc[i, "text"] = text
        layer.refresh()

    def _mask_changed(self) -> None:
        if self.saver is not None:
            self.saver.changed()

    def release(self) -> None:
        self._forget_prefetched()
        if self.saver is not None:
            self.saver.close()  # writes the pending edit; the case's layers stay in the viewer
            self.saver = None

    def close_case(self) -> None:
        """Save any pending edit and remove the case's layers."""
        self.release()
        for layer in self.layers.values():
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.layers = {}
        self.case_id = None
        self.case_label.setText("")
        self.history_list.clear()

    def pins(self) -> list[dict[str, Any]]:
        """Comments pinned on the case: the comment layer's points (array index) and texts."""
        layer = self.layers.get("pins")
        if layer is None or not len(layer.data):
            return []
        texts = layer.features["text"] if "text" in layer.features else [""] * len(layer.data)
        return [
            {"position": [float(v) for v in p], "frame": "index", "text": str(t)}
            for p, t in zip(np.asarray(layer.data), texts)
        ]

    def decide(self, action: str) -> None:
        """Log the verdict on the open case (an Accept of a changed mask is an edit), then open
        the next case still to review."""
        from napari.utils.notifications import show_error

        if self.project is None or self.case_id is None:
            show_error("open a case first")
            return
        try:
            reviewer = self.reviewer()
            if reviewer is None:
                return
            mask = np.asarray(self.layers["mask"].data)
            changed = not np.array_equal(mask, self.prediction)
            if action == "accept" and changed:
                action = "edit"
            decision = self.project.decide(
                self.case_id, reviewer, action, mask=mask if action == "edit" else None,
                seconds=round(time.monotonic() - self.opened_at, 3), comment=self.comment_edit.toPlainText().strip(),
                pins=self.pins(), prompts=self.layers["mask"].metadata.get("medloop_prompts"),
            )
        except MedloopError as exc:
            show_error(str(exc))
            return
        if self.saver is not None:
            self.saver.close()  # the verdict is logged; the draft was discarded by decide()
            self.saver = None
        done = self.case_id
        metrics = decision.metrics or {}
        self.refresh_table()
        changed_text = f" ({metrics.get('voxels_changed')} voxels changed)" if action == "edit" and metrics.get("voxels_changed") is not None else ""
        verdict = f"{done}: {decision.status} by {decision.reviewer}{changed_text}."
        state = self.project.state()
        following = [c for c in self.visible_cases() if state.cases[c].status == "to review" and c != done]
        if following:
            self.open_case(following[0])
            self.status.setText(f"{verdict} Now {following[0]} ({state.cases[following[0]].status}).")
        else:
            self.close_case()
            self.status.setText(verdict + " No cases left to review.")
        self.pin_edit.clear()

    # -- outputs ------------------------------------------------------------------------------
    def export(self) -> None:
        """Write the accepted and edited masks with the source geometry to ``<project>/export``."""
        from napari.utils.notifications import show_error

        from medloop.plugins.review.export import INDEX_NAME, export_masks

        if self.project is None:
            return
        try:
            rows = export_masks(self.project, self.project.folder / "export", accepted_only=True)
        except MedloopError as exc:
            show_error(str(exc))
            return
        written = sum(r.path is not None for r in rows)
        self.status.setText(
            f"Exported {written} mask file(s) of {len(rows)} case(s), and the index {INDEX_NAME}, to {self.project.folder / 'export'}."
        )

    def report(self) -> None:
        from napari.utils.notifications import show_error

        from medloop.plugins.review.report import write_report

        if self.project is None:
            return
        try:
            files = write_report(self.project)
        except MedloopError as exc:
            show_error(str(exc))
            return
        self.status.setText(f"Report: {files.html}")

    def _enable(self, on: bool) -> None:
        for w in (self.table, self.prev_button, self.next_button, self.accept_button, self.edit_button,
                  self.reject_button, self.second_button, self.export_button, self.report_button):
            w.setEnabled(on)
