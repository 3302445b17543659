"""What every method panel shares: the image-layer choice, one background job at a time with a
progress bar and Cancel, a status line, and errors shown as notifications."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from qtpy.QtWidgets import QComboBox, QLabel, QProgressBar, QPushButton, QWidget

from medloop.app.gui.jobs import start_job

if TYPE_CHECKING:
    import napari


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
        #: Buttons that start a job: disabled while one runs.
        self.start_buttons: list[QPushButton] = []
        self.viewer.layers.events.inserted.connect(self.refresh_layers)
        self.viewer.layers.events.removed.connect(self.refresh_layers)
        from medloop.app.gui.orientation import OrientationGuide

        OrientationGuide.install(self.viewer)  # radiological views, markers, units (once per viewer)

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

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status.setText("Cancelling ...")

    def job_finished(self) -> None:
        """Called after every job, successful or not (for subclasses)."""

    def _set_running(self, running: bool) -> None:
        for button in self.start_buttons:
            button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setMaximum(max(total, 1))
        self.progress.setValue(done)

    def _on_error(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        self.status.setText(f"Failed: {exc}")
        show_error(str(exc))

    def _finished(self) -> None:
        self.job = None
        self._set_running(False)
        self.job_finished()
