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
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
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

        self._build_controls()
        self._build_layout()
        self._connect_signals()
        self._enable(False)

    def _build_controls(self) -> None:
        """The project buttons, reviewer, filter, case table, navigation, comment, verdicts,
        outputs and mask tools."""
        self.open_button = QPushButton("Open review project …")
        self.new_button = QPushButton("New project: run a model over images …")
        self.start_buttons = [self.new_button, self.open_button]
        self.project_label = QLabel("No project open.")
        self.project_label.setWordWrap(True)
        self.reviewer_edit = QLineEdit(str(self.settings.value(SETTINGS_KEY, "") or ""))
        self.reviewer_edit.setPlaceholderText("your name (kept in the audit log)")
        self.filter_combo = QComboBox()
        self.filter_combo.addItems(FILTERS)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSortingEnabled(True)
        self.table.setMinimumHeight(140)  # five cases visible, however crowded the dock
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
        form.addRow("Show", self.filter_combo)
        nav = QHBoxLayout()
        nav.addWidget(self.prev_button)
        nav.addWidget(self.next_button)
        verdicts = QHBoxLayout()
        for b in (self.accept_button, self.edit_button, self.reject_button, self.second_button):
            verdicts.addWidget(b)
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
        layout.addWidget(self.comment_edit)
        layout.addLayout(verdicts)
        layout.addWidget(self.status)
        layout.addWidget(self.class_list)
        layout.addWidget(self.tools)
        layout.addLayout(outputs)

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
        counts = ", ".join(f"{n} {s}" for s, n in state.counts().items() if n)
        self.project_label.setText(f"{Path(folder).name}: {len(project.cases)} cases ({counts}).")
        if state.problems:
            show_warning(f"the audit log has {len(state.problems)} unreadable line(s) (a crash mid-write?); they are ignored, nothing else was lost")
        self.refresh_table()
        self._enable(True)

    def reviewer(self) -> str | None:
        """The reviewer's name: from the settings, asked once if unknown."""
        from medloop.plugins.review.project import check_name

        name = self.reviewer_edit.text().strip()
        if not name:
            name, ok = QInputDialog.getText(self, "Reviewer", "Your name, as it should appear in the audit log:")
            name = name.strip() if ok else ""
            self.reviewer_edit.setText(name)
        if not name:
            return None
        check_name(name, "reviewer name")
        self._remember_reviewer()
        return name

    def _remember_reviewer(self) -> None:
        self.settings.setValue(SETTINGS_KEY, self.reviewer_edit.text().strip())

    # -- the case list ------------------------------------------------------------------------
    def refresh_table(self, *_: Any) -> None:
        """Cases most uncertain first, with their status; the filter hides the others."""
        if self.project is None:
            return
        state = self.project.state()
        wanted = self.filter_combo.currentText()
        self.table.setSortingEnabled(False)
        self.table.setRowCount(0)
        for case in self.project.cases_sorted("uncertainty", state):
            cs = state.cases[case.id]
            if wanted != "all" and cs.status != wanted:
                continue
            row = self.table.rowCount()
            self.table.insertRow(row)
            score = case.uncertainty_score
            items = [case.id, cs.status, "" if score is None else f"{score:.3f}", f"{cs.seconds / 60:.1f}"]
            for col, text in enumerate(items):
                item = QTableWidgetItem()
                if col in (2, 3) and text:
                    item.setData(Qt.ItemDataRole.DisplayRole, float(text))  # numeric sort
                else:
                    item.setText(text)
                self.table.setItem(row, col, item)
        self.table.setSortingEnabled(True)
        self._select_current()

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
        edit), the reference and the uncertainty map, all with their exact geometry."""
        from napari.utils.notifications import show_error

        if self.project is None:
            return
        try:
            reviewer = self.reviewer()
            if reviewer is None:
                return
            image = self.project.load_image(case_id)
            prediction = self.project.load_prediction(case_id)
            draft = self.project.load_draft(case_id, reviewer)
        except MedloopError as exc:
            show_error(str(exc))
            return
        self.close_case()
        self.case_id = case_id
        classes = _classes(self.project.case(case_id))
        kwargs = image.layer_kwargs()
        self.layers["image"] = self.viewer.add_image(
            image.layer_data(), name=f"{case_id} image", metadata={"medloop_image": image}, **kwargs
        )
        label_kwargs = {k: v for k, v in kwargs.items() if k != "rgb"}
        self.prediction = np.asarray(prediction.array)
        if not classes:  # model not installed: the class numbers still get the one table's colours
            from medloop.app.io.classes import default_classes

            classes = default_classes(np.unique(self.prediction))
        data = (draft if draft is not None else self.prediction).astype(np.int32)
        style = class_layer_kwargs(classes)
        style["metadata"]["medloop_image"] = prediction
        self.layers["mask"] = mask = self.viewer.add_labels(
            data.copy(), name=f"{case_id} review mask", opacity=0.5, **style, **label_kwargs,
        )
        reference = self.project.reference_path(case_id)
        if reference is not None:
            from medloop.app.io.read import read_image

            # Same class table, drawn as outlines (and hidden at first): never mistaken for the mask.
            self.layers["reference"] = self.viewer.add_labels(
                np.asarray(read_image(reference).array), name=f"{case_id} reference", visible=False, opacity=0.8,
                **class_layer_kwargs(classes), **label_kwargs
            )
            self.layers["reference"].contour = 1
        uncertainty = self.project.uncertainty_path(case_id)
        if uncertainty is not None:
            from medloop.app.io.read import read_image

            self.layers["uncertainty"] = self.viewer.add_image(
                np.asarray(read_image(uncertainty).array), name=f"{case_id} uncertainty", colormap="inferno",
                opacity=0.5, blending="additive", contrast_limits=(0, 1), visible=False, **label_kwargs,
            )
        self.layers["pins"] = self.viewer.add_points(
            np.zeros((0, image.ndim)), name=f"{case_id} comments", face_color="#f0e442", size=4,
            features={"text": np.array([], dtype=object)}, text={"string": "{text}", "color": "#f0e442", "anchor": "upper_left"},
            ndim=image.ndim, **label_kwargs,
        )
        self.saver = self.project.autosaver(case_id, reviewer, lambda: mask.data)
        mask.events.paint.connect(lambda *_: self._mask_changed())
        mask.events.data.connect(lambda *_: self._mask_changed())
        self.viewer.layers.selection.active = mask
        self.tools.select_layer(mask.name)
        state = self.project.state().cases[case_id]
        self.comment_edit.setPlainText("")
        self.opened_at = time.monotonic()
        restored = " Restored your unsaved edit." if draft is not None else ""
        self.status.setText(f"{case_id}: {state.status}.{restored}")
        self._select_current()

    def _mask_changed(self) -> None:
        if self.saver is not None:
            self.saver.changed()

    def close_case(self) -> None:
        """Save any pending edit and remove the case's layers."""
        if self.saver is not None:
            self.saver.close()
            self.saver = None
        for layer in self.layers.values():
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.layers = {}
        self.case_id = None

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
                pins=self.pins(),
            )
        except MedloopError as exc:
            show_error(str(exc))
            return
        if self.saver is not None:
            self.saver.close()  # the verdict is logged; the draft was discarded by decide()
            self.saver = None
        done = self.case_id
        metrics = decision.metrics or {}
        dice = metrics.get("dice")
        self.refresh_table()
        self.status.setText(
            f"{done}: {decision.status}" + (f" (edit Dice {dice:.3f})" if isinstance(dice, float) and action == "edit" else "") + "."
        )
        state = self.project.state()
        following = [c for c in self.visible_cases() if state.cases[c].status == "to review" and c != done]
        if following:
            self.open_case(following[0])
        else:
            self.close_case()
            self.status.setText(self.status.text() + " No cases left to review.")

    # -- outputs ------------------------------------------------------------------------------
    def export(self) -> None:
        """Write the accepted and edited masks with the source geometry to ``<project>/export``."""
        from napari.utils.notifications import show_error

        from medloop.plugins.review.export import export_masks

        if self.project is None:
            return
        try:
            rows = export_masks(self.project, self.project.folder / "export", accepted_only=True)
        except MedloopError as exc:
            show_error(str(exc))
            return
        self.status.setText(f"Exported {len(rows)} masks to {self.project.folder / 'export'}.")

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


def _classes(case) -> dict[int, str]:
    """Class names of the case's prediction from its model's card, when the model is installed."""
    name = (case.predictions[0].model or {}).get("model") if case.predictions else None
    if name:
        try:
            from medloop.models.registry import get_model

            return dict(get_model(name).card.classes)
        except MedloopError:
            pass
    return {}
