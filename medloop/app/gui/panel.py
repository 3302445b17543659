"""What every method panel shares: the image-layer choice, one background job at a time with a
progress bar and Cancel, a status line, and errors shown as notifications."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from qtpy.QtCore import QEvent, QSize, Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QFrame,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from medloop.app.gui.jobs import start_job

if TYPE_CHECKING:
    import napari


PROGRESS_INTERVAL_S = 0.25


class MethodPanel(QWidget):
    """Base class of the method panels; subclasses lay the shared widgets out as they like."""

    #: Status text after a cancelled job.
    cancelled_message = "Cancelled; nothing was changed."

    def __init__(self, napari_viewer: "napari.Viewer") -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.job = None
        self.image_combo = QComboBox()
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self._progress_shown = 0.0
        self._docked = False  # once in a dock, losing the parent means napari removed the panel
        self._delete_when_idle = False
        #: Buttons that start a job: disabled while one runs.
        self.start_buttons: list[QPushButton] = []
        self.viewer.layers.events.inserted.connect(self.refresh_layers)
        self.viewer.layers.events.removed.connect(self.refresh_layers)
        from medloop.app.gui.orientation import OrientationGuide

        OrientationGuide.install(self.viewer)  # radiological views, markers, units (once per viewer)

    def make_scrollable(self) -> QScrollArea:
        """Move the panel's layout into a vertical scroll area (call once, after building it):
        a docked panel then scrolls instead of growing the window past the screen, and its
        labels wrap to the dock's width (no horizontal scrolling)."""
        inner = QWidget()
        inner.setLayout(self.layout())  # reparents the layout and its widgets
        area = _ContentWidthScrollArea()
        area.setWidgetResizable(True)
        area.setFrameShape(QFrame.Shape.NoFrame)
        area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        area.setWidget(inner)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(area)
        self.scroll_area = area
        for label in inner.findChildren(QLabel):
            label.setWordWrap(True)
        for combo in inner.findChildren(QComboBox):  # long layer/model names must not widen the dock
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(8)
        return area

    def refresh_layers(self, *_: Any) -> None:
        """Offer every image layer, keeping the current choice when it still exists."""
        self.offer_layers(self.image_combo, "image")

    def offer_layers(self, combo: QComboBox, kind: str) -> None:
        """Fill ``combo`` with the names of the viewer's ``kind`` layers ("image", "labels", ...),
        keeping its current choice when that layer still exists."""
        current = combo.currentText()
        names = [layer.name for layer in self.viewer.layers if layer._type_string == kind]
        combo.clear()
        combo.addItems(names)
        if current in names:
            combo.setCurrentText(current)

    def image_layer(self):
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def start(
        self, compute: Callable, on_done: Callable[[Any], None], on_info: Callable[[dict], None] | None = None
    ) -> None:
        """Run ``compute(progress, should_stop)`` in a worker; ``on_done(result)`` on success,
        ``on_info(info)`` for every ``progress(done, total, info)`` that carries an info dict."""
        self._set_running(True)
        self.job = start_job(
            compute,
            on_done=on_done,
            on_progress=self._on_progress,
            on_error=self._on_error,
            on_cancelled=lambda: self.status.setText(self.cancelled_message),
            on_finished=self._finished,
            on_info=on_info,
        )

    def refuse(self, exc: BaseException) -> None:
        """A bad input: one line in the status line, nothing started."""
        self.status.setText(f"Cannot run: {exc}")

    def start_prepared(self, prepare: Callable[[], tuple[Callable, Callable[[Any], None]]], running: str) -> bool:
        """``prepare()`` checks the inputs on the GUI thread and returns ``(compute, on_done)``;
        a medloop or value error is shown by :meth:`refuse` and nothing starts. Returns whether
        a job started (never a second one while one runs)."""
        from medloop.app.errors import MedloopError

        if self.job is not None:
            return False
        try:
            compute, done = prepare()
        except (MedloopError, ValueError) as exc:
            self.refuse(exc)
            return False
        self.status.setText(running)
        self.start(compute, done)
        return True

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status.setText("Cancelling ...")

    def job_finished(self) -> None:
        """Called after every job, successful or not (for subclasses)."""

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        """Closing the panel cancels its job and releases what it holds (:meth:`release`):
        pending edits are written and no worker or autosave thread outlives it."""
        self._let_go()
        super().closeEvent(event)

    def _let_go(self) -> None:
        if self.job is not None:
            self.job.cancel()
        self.release()

    def release(self) -> None:
        """Write pending edits and stop the background threads the panel owns (subclasses)."""

    def event(self, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:
                self._removed_from_dock()
        return super().event(event)

    def _removed_from_dock(self) -> None:
        """The dock's close button makes napari unparent the panel (``remove_dock_widget``),
        with no close event: release what it holds and delete it on the GUI thread once its job
        has ended. Left to Python's cyclic collector (the panel's slots refer to it), it would
        be freed on whichever thread collects next, a worker's included, and Qt crashes there."""
        self._let_go()
        if self.job is not None:
            self._delete_when_idle = True  # the job's last signals still reach the panel
        else:
            self.deleteLater()

    def _set_running(self, running: bool) -> None:
        for button in self.start_buttons:
            button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_progress(self, done: int, total: int) -> None:
        # QProgressBar repaints synchronously whenever its text changes, and under a GL canvas
        # that costs 30-60 ms of GUI thread each time: show at most 4 updates a second.
        import time

        now = time.perf_counter()
        if done < total and now - self._progress_shown < PROGRESS_INTERVAL_S:
            return
        self._progress_shown = now
        self.progress.setMaximum(max(total, 1))
        self.progress.setValue(done)

    def _on_error(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        self.status.setText(f"Failed: {exc}")
        show_error(str(exc))

    def _finished(self) -> None:
        self.job = None
        if self._delete_when_idle:
            self.deleteLater()
            return
        self._set_running(False)
        self.job_finished()


class _ContentWidthScrollArea(QScrollArea):
    """Scrolls vertically only and is never narrower than its content's minimum width (as
    styled in the window, folded sections included once unfolded): the dock widens instead of
    clipping the right edge."""

    def setWidget(self, widget: QWidget) -> None:  # noqa: N802 - Qt's name
        super().setWidget(widget)
        widget.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() in (QEvent.Type.LayoutRequest, QEvent.Type.StyleChange, QEvent.Type.Show):
            self.updateGeometry()
        return False

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        hint = super().minimumSizeHint()
        inner = self.widget()
        if inner is None:
            return hint
        width = inner.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()
        return QSize(max(hint.width(), width), hint.height())


class Fold(QWidget):
    """A titled section that folds away (advanced options): a ▸/▾ button and a form below it.
    Folded widgets keep their values and stay enabled; they are only hidden."""

    def __init__(self, title: str, expanded: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.button = QToolButton()
        self.button.setText(title)
        self.button.setCheckable(True)
        self.button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.button.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.body = QWidget()
        self.form = QFormLayout(self.body)
        self.form.setContentsMargins(12, 0, 0, 0)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.button)
        layout.addWidget(self.body)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self.button.toggled.connect(self.set_expanded)
        self.button.setChecked(expanded)
        self.set_expanded(expanded)

    def set_expanded(self, on: bool) -> None:
        self.button.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        if self.button.isChecked() != on:
            self.button.setChecked(on)
        self.body.setVisible(on)

    @property
    def expanded(self) -> bool:
        return self.button.isChecked()

    def addRow(self, *args) -> None:  # noqa: N802 - QFormLayout's name
        self.form.addRow(*args)
