"""Dock a plugin's panel in a viewer, straight from the registry (so a plugin that napari's
manifest does not list, such as one added through an entry point, opens the same way)."""

from __future__ import annotations

from typing import Any

from medloop.app.manifest import MethodPanel
from medloop.app.plugin import resolve


def open_panel(viewer: Any, panel: MethodPanel) -> Any:
    """Dock ``panel`` (once: a second call shows the open one) and return its widget."""
    window = viewer.window
    docks = window.dock_widgets  # name -> the docked widget
    if panel.display_name in docks:
        widget = docks[panel.display_name]
        widget.parent().show()
        return widget
    widget = resolve(panel.factory)(viewer)
    window.add_dock_widget(widget, name=panel.display_name, area="right")
    return widget
