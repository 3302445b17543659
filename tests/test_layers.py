"""Layer contracts (DESIGN.md): imports run one way only, including imports inside functions.

ground (app/errors, app/io, app/engine, the registry app/plugin and the verb kit app/verbs)
< models < plugins; the shell (app/cli, app/gui, app/manifest) reaches plugins only through the
registry; no plugin imports another; only a plugin's GUI modules use the shell's GUI kit.
"""

from __future__ import annotations

import ast
from pathlib import Path

import medloop

PACKAGE = Path(medloop.__file__).parent
GROUND = ("medloop._version", "medloop.app.errors", "medloop.app.io", "medloop.app.engine", "medloop.app.discovery",
          "medloop.app.plugin",
          "medloop.app.verbs", "medloop.app.samples")
SHELL = ("medloop.app.cli", "medloop.app.gui", "medloop.app.manifest")
PLUGIN_GUI_MODULES = ("widget", "demo")  # a plugin's panel, and what `medloop demo` shows


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def medloop_imports(source: str, module: str) -> set[str]:
    """Every medloop module ``source`` imports, at any depth (functions included)."""
    found = set()
    package = module.split(".")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                base = ".".join(package[: len(package) - node.level] + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m == "medloop" or m.startswith("medloop.")}


def tier(module: str) -> str:
    if within(module, GROUND):
        return "ground"
    if within(module, ("medloop.models",)):
        return "models"
    if within(module, SHELL):
        return "shell"
    if within(module, ("medloop.plugins",)):
        return "plugin"
    return "root"  # medloop/__init__.py: the public API, lazily importing io


def is_real_module(name: str) -> bool:
    """``from pkg import name`` lists ``pkg.name`` too; keep it only when it is a module or package."""
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").exists() or (PACKAGE.parent / rel / "__init__.py").exists()


def violations(module: str, imports: set[str]) -> list[str]:
    """The imports of ``module`` that break a layer contract, each with the rule it breaks."""
    bad = []
    mine = tier(module)
    for target in sorted(i for i in imports if is_real_module(i)):
        other = tier(target)
        if mine == "ground" and other != "ground":
            bad.append(f"{module} -> {target}: the ground imports nothing above it")
        elif mine == "models" and other not in ("ground", "models"):
            bad.append(f"{module} -> {target}: models import only the ground")
        elif mine == "shell" and other == "plugin":
            bad.append(f"{module} -> {target}: the shell reaches plugins only through the registry")
        elif mine == "plugin":
            own = ".".join(module.split(".")[:3])
            gui = module.split(".")[-1] in PLUGIN_GUI_MODULES
            if other == "plugin" and not within(target, (own,)) and target != "medloop.plugins":
                bad.append(f"{module} -> {target}: a plugin never imports another plugin")
            elif other == "shell" and not (gui and within(target, ("medloop.app.gui",))):
                bad.append(f"{module} -> {target}: only a plugin's panel uses the shell (its GUI kit)")
    return bad


def all_violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        bad += violations(name, medloop_imports(path.read_text(encoding="utf-8"), name))
    return bad


def test_checker_reads_imports_inside_functions_and_relative_ones():
    src = "def f():\n    from medloop.plugins.segmentation.method import segment\nfrom . import read\n"
    assert medloop_imports(src, "medloop.app.io.write") == {
        "medloop.plugins.segmentation.method", "medloop.plugins.segmentation.method.segment",
        "medloop.app.io", "medloop.app.io.read",
    }


def test_checker_flags_each_kind_of_wrong_arrow():
    assert violations("medloop.app.engine.tiling", {"medloop.models.registry"}) == [
        "medloop.app.engine.tiling -> medloop.models.registry: the ground imports nothing above it"]
    assert violations("medloop.models.variants", {"medloop.plugins.segmentation.method"}) == [
        "medloop.models.variants -> medloop.plugins.segmentation.method: models import only the ground"]
    assert violations("medloop.plugins.correction.headless", {"medloop.plugins.segmentation.method"}) == [
        "medloop.plugins.correction.headless -> medloop.plugins.segmentation.method: a plugin never imports another plugin"]
    assert violations("medloop.app.gui.launcher", {"medloop.plugins.segmentation.method"}) == [
        "medloop.app.gui.launcher -> medloop.plugins.segmentation.method: the shell reaches plugins only through the registry"]
    assert violations("medloop.plugins.review.project", {"medloop.app.gui.jobs"}) == [
        "medloop.plugins.review.project -> medloop.app.gui.jobs: only a plugin's panel uses the shell (its GUI kit)"]
    assert violations("medloop.plugins.review.widget", {"medloop.app.gui.jobs", "medloop.plugins.review.project"}) == []


def test_every_module_keeps_the_layer_contracts():
    assert all_violations() == []


def test_ground_and_models_never_name_a_plugin():
    """The issue's acceptance grep: nothing under app/io, app/engine or models mentions medloop.plugins."""
    hits = [
        str(p.relative_to(PACKAGE))
        for folder in ("app/io", "app/engine", "models")
        for p in (PACKAGE / folder).rglob("*.py")
        if "medloop.plugins" in p.read_text(encoding="utf-8")
    ]
    assert hits == []


def import_graph() -> dict[str, set[str]]:
    """Module -> the medloop modules it imports (functions included), packages resolved to modules."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        graph[name] = {i for i in medloop_imports(path.read_text(encoding="utf-8"), name) if is_real_module(i) and i != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_cycle_finder_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    """Package ``__init__`` files that only declare a plugin are left out: importing a submodule
    runs its package's ``__init__`` anyway, so that edge is not a design choice."""
    graph = {m: {i for i in deps if not graph_is_parent(i, m)} for m, deps in import_graph().items()}
    assert cycles(graph) == []


def graph_is_parent(target: str, module: str) -> bool:
    return module.startswith(target + ".")
