"""Where plugins keep their resources, found without importing them (Qt-free ground).

A plugin package may ship ``resources/<kind>/`` (``models``, ``samples``, ``recipes``). The
registry (models) and the shell look there through :func:`plugin_resource_dirs`, which locates
each package with :func:`importlib.util.find_spec` only: a plugin's ``__init__`` (and its heavy
imports) never runs just because its resources are listed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: The plugin packages that ship with medloop. (The plugin registry will supply its own list.)
BUILTIN_PLUGINS: tuple[str, ...] = ("medloop.plugins.segmentation", "medloop.plugins.correction")


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
    """``<package>/resources/<kind>`` of every plugin package (default :data:`BUILTIN_PLUGINS`)
    that has one, in plugin order."""
    found: list[Path] = []
    for name in BUILTIN_PLUGINS if plugins is None else plugins:
        for folder in package_dirs(name):
            candidate = folder / "resources" / kind
            if candidate.is_dir() and candidate not in found:
                found.append(candidate)
    return found
