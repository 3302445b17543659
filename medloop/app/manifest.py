"""medloop's npe2 manifest, generated from the plugin registry (Qt-free).

``medloop/napari.yaml`` is this module's output, checked in because napari reads a file; a test
compares the two, and ``python -m medloop.app.manifest`` rewrites the file after a plugin changes.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from medloop.app.plugin import Plugin, load_plugins

PLUGIN_NAME = "napari-medloop"
HOME_PANEL = "medloop"
HOME_COMMAND = f"{PLUGIN_NAME}.home"

# The reader and writer belong to the shell (app/io), not to any method.
# Only what medloop reads: a "*" would offer medloop for every dropped file (a .txt included)
# and make napari ask which reader to use each time. DICOM folders come through
# accepts_directories; an extension-less DICOM file is recognised by content (get_reader).
_READER_PATTERNS = [
    "*.nii", "*.nii.gz", "*.hdr", "*.nrrd", "*.nhdr", "*.mha", "*.mhd", "*.dcm", "*.dicom", "*.tif", "*.tiff",
    "*.png", "*.jpg", "*.jpeg", "*.bmp", "*.svs", "*.ndpi", "*.mrxs", "*.vms", "*.vmu", "*.scn", "*.bif",
    "*.svslide",
]
_IO_COMMANDS = [
    {"id": f"{PLUGIN_NAME}.get_reader", "title": "Open a medical image with its geometry",
     "python_name": "medloop.app.io.napari_reader:get_reader"},
    {"id": f"{PLUGIN_NAME}.write_labels", "title": "Save labels with the source geometry",
     "python_name": "medloop.app.io.napari_reader:write_labels"},
]


@dataclass(frozen=True)
class MethodPanel:
    """A method's dock widget as the registry declares it."""

    display_name: str
    command: str
    title: str
    factory: str


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def method_panels(plugins: list[Plugin] | None = None) -> list[MethodPanel]:
    """Every method panel of every plugin, in registry order (the home panel excluded)."""
    panels = []
    for plugin in load_plugins() if plugins is None else plugins:
        for widget in plugin.widgets:
            command = f"{PLUGIN_NAME}.{plugin.name}" + ("" if len(plugin.widgets) == 1 else f".{_slug(widget.name)}")
            panels.append(MethodPanel(widget.name, command, widget.title or widget.name, widget.factory))
    return panels


def manifest_dict(plugins: list[Plugin] | None = None) -> dict[str, Any]:
    """The npe2 manifest as a dict: the home panel, every plugin's panels and samples, the reader/writer."""
    plugins = load_plugins() if plugins is None else plugins
    panels = method_panels(plugins)
    samples = [(s, f"{PLUGIN_NAME}.sample_{_slug(s.key)}") for p in plugins for s in p.samples]
    commands = [{"id": HOME_COMMAND, "title": "medloop home panel", "python_name": "medloop.app.gui.home:HomePanel"}]
    commands += [{"id": m.command, "title": m.title, "python_name": m.factory} for m in panels]
    commands += [{"id": cid, "title": s.display_name, "python_name": s.factory} for s, cid in samples]
    return {
        "name": PLUGIN_NAME,
        "display_name": "medloop",
        "contributions": {
            "commands": commands + _IO_COMMANDS,
            "readers": [{"command": f"{PLUGIN_NAME}.get_reader", "filename_patterns": _READER_PATTERNS,
                         "accepts_directories": True}],
            "writers": [{"command": f"{PLUGIN_NAME}.write_labels", "layer_types": ["labels"],
                         "filename_extensions": [".nii.gz", ".nii", ".nrrd", ".mha", ".tif", ".tiff"],
                         "display_name": "medloop (keeps geometry)"}],
            "widgets": [{"command": HOME_COMMAND, "display_name": HOME_PANEL}]
            + [{"command": m.command, "display_name": m.display_name} for m in panels],
            "sample_data": [{"key": s.key, "display_name": s.display_name, "command": cid} for s, cid in samples],
        },
    }


def manifest_text(plugins: list[Plugin] | None = None) -> str:
    """The manifest as the YAML text of ``napari.yaml``."""
    import yaml

    header = "# Generated from the plugin registry by `python -m medloop.app.manifest`; do not edit by hand.\n"
    return header + yaml.safe_dump(manifest_dict(plugins), sort_keys=False, width=110)


def manifest_path() -> Path:
    return Path(str(files("medloop") / "napari.yaml"))


def load_manifest():
    """The parsed npe2 manifest of medloop (the checked-in file)."""
    from npe2 import PluginManifest

    return PluginManifest.from_file(str(manifest_path()))


if __name__ == "__main__":
    from medloop.app.io.atomic import atomic_write_text

    atomic_write_text(manifest_path(), manifest_text())
    print(f"wrote {manifest_path()}", file=sys.stderr)
