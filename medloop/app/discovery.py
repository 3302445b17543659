"""Where plugins keep their resources, found without importing them (Qt-free ground).

The one list of plugin packages lives here: the built-in ones (:data:`BUILTIN_PLUGINS`) and
those other packages add through the ``medloop.plugins`` entry-point group. A plugin package may
ship ``resources/<kind>/`` (``models``, ``samples``, ``recipes``). The model registry and the
shell look there through :func:`plugin_resource_dirs`, which locates each package with
:func:`importlib.util.find_spec` only: a plugin's ``__init__`` (and its heavy imports) never runs
just because its resources are listed. Loading the declarations is :mod:`medloop.app.plugin`'s job.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: The built-in method folders, in the order their panels and verbs are listed. A new method
#: adds its package here (or, as a separate package, an entry point in ENTRY_POINT_GROUP).
BUILTIN_PLUGINS: tuple[str, ...] = (
    "medloop.plugins.segmentation",
    "medloop.plugins.correction",
    "medloop.plugins.review",
    "medloop.plugins.interactive",
    "medloop.plugins.axons",
    "medloop.plugins.staining",
    "medloop.plugins.lesions",
)
#: Entry-point group through which other packages add plugins.
ENTRY_POINT_GROUP = "medloop.plugins"


def plugin_packages() -> list[str]:
    """Names of every plugin package: the built-in ones, then entry points (sorted by name)."""
    from importlib.metadata import entry_points

    names = list(BUILTIN_PLUGINS)
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.value not in names:
            names.append(ep.value)
    return names


def package_dirs(name: str) -> list[Path]:
    """The folders of package ``name`` (several for a namespace package), or [] if there is no
    such package; the package itself is not imported (its parents are)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a parent package is missing or broken
        return []
    if spec is None or spec.submodule_search_locations is None:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def plugin_resource_dirs(kind: str, plugins: tuple[str, ...] | None = None) -> list[Path]:
    """``<package>/resources/<kind>`` of every plugin package (default :func:`plugin_packages`)
    that has one, in plugin order."""
    found: list[Path] = []
    for name in plugin_packages() if plugins is None else plugins:
        for folder in package_dirs(name):
            candidate = folder / "resources" / kind
            if candidate.is_dir() and candidate not in found:
                found.append(candidate)
    return found
