"""Qt lives only in medloop/app/gui/ and medloop/plugins/*/widget.py (DESIGN.md).

Checked twice: statically (no forbidden import statement anywhere else) and dynamically
(importing every other module, in a fresh interpreter, loads no Qt binding).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import medloop

PACKAGE = Path(medloop.__file__).parent
QT_MODULES = ("qtpy", "PySide6", "PySide2", "PyQt5", "PyQt6", "superqt", "napari.qt", "napari._qt", "magicgui")


def gui_allowed(module: str) -> bool:
    parts = module.split(".")
    return module.startswith("medloop.app.gui") or (
        parts[:2] == ["medloop", "plugins"] and parts[-1] == "widget"
    )


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def forbidden_imports(source: str) -> list[str]:
    """Qt-ish modules imported anywhere in ``source`` (including inside functions)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found += [n for n in names if any(n == q or n.startswith(q + ".") for q in QT_MODULES)]
    return found


def test_checker_flags_qt_imports():
    assert forbidden_imports("from qtpy.QtWidgets import QWidget") == ["qtpy.QtWidgets", "qtpy.QtWidgets.QWidget"]
    assert forbidden_imports("def f():\n    import napari._qt.qt_viewer\n") == ["napari._qt.qt_viewer"]
    assert forbidden_imports("from napari import qt") == ["napari.qt"]
    assert forbidden_imports("import napari\nfrom napari.utils import notifications") == []


def test_no_qt_import_statements_outside_gui_modules():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        if not gui_allowed(name):
            hits = forbidden_imports(path.read_text(encoding="utf-8"))
            if hits:
                offenders[name] = hits
    assert offenders == {}


def test_importing_compute_modules_loads_no_qt():
    modules = sorted(
        module_name(p) for p in PACKAGE.rglob("*.py") if not gui_allowed(module_name(p))
    )
    script = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"qt = sorted(m for m in sys.modules if any(m == q or m.startswith(q + '.') for q in {QT_MODULES!r}))\n"
        "print(json.dumps(qt))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(modules) >= 10
    assert json.loads(result.stdout.splitlines()[-1]) == []
