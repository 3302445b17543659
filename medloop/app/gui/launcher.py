"""Open napari with medloop's panels: the `medloop gui` and `medloop demo` commands."""

from __future__ import annotations

from pathlib import Path

from medloop.app.io.image import MedImage
from medloop.app.manifest import HOME_PANEL, PLUGIN_NAME


def make_viewer(title: str = "medloop", show: bool = True):
    """A napari viewer with medloop's home panel docked."""
    import napari

    viewer = napari.Viewer(title=title, show=show)
    viewer.window.add_plugin_dock_widget(PLUGIN_NAME, HOME_PANEL)
    return viewer


def add_images(viewer, images: list[MedImage], labels: list[MedImage]) -> None:
    """Add already-read images and label maps at their physical positions."""
    for image in images:
        viewer.add_image(image.array, name=_name(image), metadata={"medloop_image": image}, **image.layer_kwargs())
    for mask in labels:
        viewer.add_labels(mask.array, name=_name(mask), metadata={"medloop_image": mask}, **mask.layer_kwargs())


def _name(image: MedImage) -> str:
    return Path(image.path).name.split(".")[0] if image.path else "image"


def run_gui(images: list[MedImage], labels: list[MedImage]) -> int:
    """Open the GUI on the given images and block until it is closed."""
    import napari

    from medloop.app.gui.headless import require_display

    require_display()
    viewer = make_viewer()
    add_images(viewer, images, labels)
    napari.run()
    return 0


def run_demo(screenshot: Path | None = None) -> int:
    """The main job on the packaged sample; with ``screenshot``, render to a PNG and exit."""
    from medloop.app.gui.headless import display_for_screenshot
    from medloop.app.gui.layers import add_layer_data
    from medloop.app.samples import brain_sample_layers

    def build():
        viewer = make_viewer(title="medloop demo")
        viewer.window.resize(1400, 900)
        add_layer_data(viewer, brain_sample_layers())
        viewer.reset_view()
        return viewer

    if screenshot is None:
        import napari

        from medloop.app.gui.headless import require_display

        require_display()
        build()
        napari.run()
        return 0
    with display_for_screenshot():
        viewer = build()
        from qtpy.QtWidgets import QApplication

        for _ in range(5):
            QApplication.processEvents()
        viewer.screenshot(str(screenshot), canvas_only=False, flash=False)
        viewer.close()
    return 0
