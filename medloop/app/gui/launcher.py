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
    from medloop.app.gui.layers import class_layer_kwargs
    from medloop.app.io.classes import default_classes

    for mask in labels:
        # No class names in a label file: value k gets class k's colour and hovers as "class k".
        import numpy as np

        top = int(np.max(mask.array)) if mask.array.size else 0
        style = class_layer_kwargs(default_classes(range(1, min(top, 255) + 1)))
        style["metadata"]["medloop_image"] = mask
        kwargs = {k: v for k, v in mask.layer_kwargs().items() if k != "rgb"}
        viewer.add_labels(mask.array, name=_name(mask), **style, **kwargs)


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
    """The main job on the packaged sample: segment it with the bundled model and show it.

    With ``screenshot``, render to a PNG and exit (a private Xvfb starts when there is no display).
    """
    from medloop.app.gui.headless import display_for_screenshot

    if screenshot is None:
        import napari

        from medloop.app.gui.headless import require_display

        require_display()
        _build_demo()
        napari.run()
        return 0
    with display_for_screenshot():
        viewer = _build_demo()
        from qtpy.QtWidgets import QApplication

        for _ in range(5):
            QApplication.processEvents()
        viewer.screenshot(str(screenshot), canvas_only=False, flash=False)
        viewer.close()
    return 0


def _build_demo():
    """Viewer with the demo of the first plugin that has one (the brain sample segmented by the
    bundled model), that plugin's first panel docked."""
    from medloop.app.gui.panels import open_panel
    from medloop.app.manifest import method_panels
    from medloop.app.plugin import load_plugins, resolve

    viewer = make_viewer(title="medloop demo")
    viewer.window.resize(1400, 900)
    plugins = load_plugins()
    plugin = next((p for p in plugins if p.demo), None)
    if plugin is not None:
        panels = method_panels([plugin])
        panel = open_panel(viewer, panels[0]) if panels else None
        resolve(plugin.demo)(viewer, panel)
    viewer.reset_view()
    return viewer
