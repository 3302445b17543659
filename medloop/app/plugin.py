"""The plugin registry: how a method folder declares itself, and how the shell finds it (Qt-free).

A method is one folder under ``medloop/plugins/`` (or any installed package) whose
``__init__.py`` holds ``PLUGIN = Plugin(...)``. Built-in plugins are named once, in
:data:`~medloop.app.discovery.BUILTIN_PLUGINS`; other packages join through the
``medloop.plugins`` entry-point group (``[project.entry-points."medloop.plugins"] name =
"package"``). Everything a plugin contributes
is a ``"module:attribute"`` reference, resolved only when used, so listing plugins is cheap and
imports no torch, Qt or napari.

Plugins never import each other. Where one needs another's capability (Review runs a
segmentation model), the provider names it in ``services`` and the user asks
:func:`service` for it, so neither names the other's module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from medloop.app.discovery import BUILTIN_PLUGINS, ENTRY_POINT_GROUP, plugin_packages
from medloop.app.discovery import plugin_resource_dirs as resource_dirs
from medloop.app.errors import MedloopError

__all__ = [
    "BUILTIN_PLUGINS", "ENTRY_POINT_GROUP", "Plugin", "PluginError", "Sample", "Widget", "load_plugins",
    "plugin_packages", "resolve", "resource_dirs", "service",
]

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
    ``resources/models/<name>/`` (found by :func:`~medloop.app.discovery.plugin_resource_dirs`), recipes in
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
