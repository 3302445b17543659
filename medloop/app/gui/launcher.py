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


DEMO_MODEL = "brain-tissue-t1"


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
    """Viewer with the T1 sample, the bundled model's tissue map over it, and the panels docked.

    The reference labels are added hidden, for comparison.
    """
    from medloop.app.gui.layers import add_layer_data
    from medloop.app.samples import brain_sample_layers, load_brain_sample
    from medloop.plugins.segmentation.method import SegmentParams, segment
    from medloop.app.gui.layers import class_colors

    viewer = make_viewer(title="medloop demo")
    viewer.window.resize(1400, 900)
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Segmentation")
    image_layer, reference = add_layer_data(viewer, brain_sample_layers())
    reference.visible = False
    t1, _ = load_brain_sample()
    result = segment(t1, SegmentParams(DEMO_MODEL, device="cpu"))
    prov = result.provenance
    viewer.add_labels(
        result.labels.array, name=f"{image_layer.name} {DEMO_MODEL}", opacity=0.5,
        colormap=class_colors(prov["classes"]),
        metadata={"medloop_image": result.labels, "provenance": prov, "classes": prov["classes"]},
        **result.labels.layer_kwargs(),
    )
    panel.status.setText(f"{DEMO_MODEL}: done in {prov['seconds']} s on {prov['device']}.")
    viewer.reset_view()
    return viewer
