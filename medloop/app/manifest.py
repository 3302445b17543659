"""What medloop contributes to napari, read from its npe2 manifest (Qt-free)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

PLUGIN_NAME = "napari-medloop"
HOME_PANEL = "medloop"


@dataclass(frozen=True)
class MethodPanel:
    """A method's dock widget as the manifest declares it."""

    display_name: str
    command: str
    title: str


def load_manifest():
    """The parsed npe2 manifest of medloop."""
    from npe2 import PluginManifest

    return PluginManifest.from_file(str(files("medloop") / "napari.yaml"))


def method_panels() -> list[MethodPanel]:
    """Every method panel the manifest contributes (the home panel itself excluded)."""
    manifest = load_manifest()
    titles = {c.id: c.title for c in manifest.contributions.commands or []}
    return [
        MethodPanel(w.display_name, w.command, titles.get(w.command, w.display_name))
        for w in manifest.contributions.widgets or []
        if w.display_name != HOME_PANEL
    ]
