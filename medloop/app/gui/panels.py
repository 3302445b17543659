"""Dock a plugin's panel in a viewer, from the registry.

A panel that medloop's napari manifest lists opens through napari (so the Plugins menu and the
home panel dock the same widget once); one the manifest does not list (a plugin added through an
entry point) is built from its factory and docked under its own name.
"""

from __future__ import annotations

from typing import Any

from medloop.app.manifest import PLUGIN_NAME, MethodPanel, manifest_path
from medloop.app.plugin import resolve


def _in_napari_manifest(panel: MethodPanel) -> bool:
    import yaml

    manifest = yaml.safe_load(manifest_path().read_text(encoding="utf-8"))
    return panel.display_name in {w["display_name"] for w in manifest["contributions"]["widgets"]}


def open_panel(viewer: Any, panel: MethodPanel) -> Any:
    """Dock ``panel`` (once: a second call shows the open one) and return its widget."""
    window = viewer.window
    if _in_napari_manifest(panel):
        _, widget = window.add_plugin_dock_widget(PLUGIN_NAME, panel.display_name)
        return widget
    docks = window.dock_widgets  # name -> the docked widget
    if panel.display_name in docks:
        widget = docks[panel.display_name]
        widget.parent().show()
        return widget
    widget = resolve(panel.factory)(viewer)
    window.add_dock_widget(widget, name=panel.display_name, area="right")
    return widget
