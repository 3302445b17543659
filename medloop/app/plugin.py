"""The plugin registry: how a method folder declares itself, and how the shell finds it (Qt-free).

A method is one folder under ``medloop/plugins/`` (or any installed package) whose
``__init__.py`` holds ``PLUGIN = Plugin(...)``. Built-in plugins are named once, in
:data:`BUILTIN_PLUGINS`; other packages join through the ``medloop.plugins`` entry-point group
(``[project.entry-points."medloop.plugins"] name = "package"``). Everything a plugin contributes
is a ``"module:attribute"`` reference, resolved only when used, so listing plugins is cheap and
imports no torch, Qt or napari.

Plugins never import each other. Where one needs another's capability (Review runs a
segmentation model), the provider names it in ``services`` and the user asks
:func:`service` for it, so neither names the other's module.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from medloop.app.errors import MedloopError

#: The built-in method folders, in the order their panels and verbs are listed.
BUILTIN_PLUGINS = (
    "medloop.plugins.segmentation",
    "medloop.plugins.correction",
    "medloop.plugins.review",
)
#: Entry-point group through which other packages add plugins.
ENTRY_POINT_GROUP = "medloop.plugins"


class PluginError(MedloopError):
    """A plugin is declared wrongly, or a service nobody provides was asked for."""


@dataclass(frozen=True)
class Widget:
    """A dock panel: ``factory`` is ``"module:Class"`` called with the napari viewer."""

    name: str
    factory: str
    title: str = ""


@dataclass(frozen=True)
class Sample:
    """Sample data: ``factory`` returns napari layer-data tuples."""

    key: str
    display_name: str
    factory: str


@dataclass(frozen=True)
class Plugin:
    """Everything a method contributes, declared in its folder's ``__init__.py``.

    ``cli`` is ``"module:add_verbs"``: ``add_verbs(subparsers)`` adds the plugin's own verbs
    (each sets ``handler=`` with ``set_defaults``). ``train`` is ``"module:TRAINING"``, an object
    with ``add_options(parser)`` (the plugin's ``medloop train`` flags) and ``run(args) -> int |
    None`` (None: these arguments are not for this plugin). Packaged models live in the folder's
    ``resources/models/<name>/`` (found by :func:`resource_dirs`), recipes in
    ``resources/recipes/``.
    """

    name: str
    title: str
    cli: str | None = None
    train: str | None = None
    widgets: tuple[Widget, ...] = ()
    samples: tuple[Sample, ...] = ()
    services: dict[str, str] = field(default_factory=dict)
    demo: str | None = None  # "module:build(viewer)": what `medloop demo` shows, if anything
    package: str = ""  # filled in by discovery: the plugin's package name


def plugin_packages() -> list[str]:
    """Names of every plugin package: the built-in ones, then entry points (sorted by name)."""
    names = list(BUILTIN_PLUGINS)
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.value not in names:
            names.append(ep.value)
    return names


def load_plugins() -> list[Plugin]:
    """Import every plugin package and return its declaration (with ``package`` filled in)."""
    found: list[Plugin] = []
    for package in plugin_packages():
        module = importlib.import_module(package)
        declared = getattr(module, "PLUGIN", None)
        if not isinstance(declared, Plugin):
            raise PluginError(f"plugin package {package} has no PLUGIN = Plugin(...) in its __init__.py; declare it there")
        found.append(Plugin(**{**declared.__dict__, "package": package}))
    names = [p.name for p in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PluginError(f"two plugins are named {', '.join(duplicates)}; rename one of them")
    return found


def resolve(reference: str) -> Any:
    """The object a ``"module:attribute"`` reference names (imported now)."""
    module, _, attr = reference.partition(":")
    if not attr:
        raise PluginError(f"{reference!r} is not a 'module:attribute' reference; write it as package.module:name")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"cannot load {reference} ({exc}); check the plugin's declaration") from None


def service(name: str) -> Any:
    """The object some plugin provides under ``name`` in its ``services``."""
    for plugin in load_plugins():
        if name in plugin.services:
            return resolve(plugin.services[name])
    raise PluginError(f"no installed plugin provides {name!r}; install the plugin that does")


def package_dir(package: str) -> Path | None:
    """The folder of ``package``, found without running its code (None when not installed)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resource_dirs(kind: str) -> list[Path]:
    """Every plugin's ``resources/<kind>`` folder that exists (``models``, ``recipes``, ...)."""
    dirs = []
    for package in plugin_packages():
        folder = package_dir(package)
        if folder is not None and (folder / "resources" / kind).is_dir():
            dirs.append(folder / "resources" / kind)
    return dirs
