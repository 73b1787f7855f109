"""The import graph: no circle inside the package, the package never reaches into the tools, no tool
imports another, and the bottom layer (errors, config) imports nothing above it. Read from the
source (every import, those inside functions included), so a lazy import cannot hide a back-arrow."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules() -> dict:
    """``{dotted name: path}`` of every module of the ``detector`` package."""
    out = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "detector")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[dotted[: -len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
    return out


def _imports(path: str, module: str, is_package: bool) -> set:
    """Every module name ``path`` imports (absolute; ``from x import y`` gives ``x`` and ``x.y``)."""
    package = module if is_package else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


MODULES = _modules()
GRAPH = {m: {n for n in _imports(p, m, p.endswith("__init__.py")) if n in MODULES and n != m}
         for m, p in MODULES.items()}


def _reachable(start: str) -> set:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_graph_is_read_from_the_source():
    assert "detector.models.build" in GRAPH["detector.models"]  # the package's __init__ imports it
    assert "detector.config" in GRAPH["detector.models.build"]
    assert "detector.engine.trainer" in GRAPH["detector.engine"]


def test_no_import_circle_in_the_package():
    circles = sorted(m for m in GRAPH if m in _reachable(m) and m != "detector")
    assert circles == [], f"modules that import themselves through others: {circles}"


def test_the_bottom_layer_imports_nothing_above_it():
    for bottom in ("detector.errors", "detector.config"):
        above = {m for m in _reachable(bottom) if m not in ("detector", "detector.errors")}
        assert above == set(), f"{bottom} reaches {sorted(above)}"


def test_the_package_never_imports_the_tools():
    for module, path in MODULES.items():
        names = _imports(path, module, path.endswith("__init__.py"))
        assert not any(n.split(".")[0] in ("tools", "detector_tools") for n in names), module


@pytest.mark.parametrize("tool", sorted(f for f in os.listdir(os.path.join(ROOT, "tools")) if f.endswith(".py")))
def test_no_tool_imports_another(tool):
    """A tool runs the same from a checkout and installed (``detector_tools``): it imports the package only."""
    names = _imports(os.path.join(ROOT, "tools", tool), f"tools.{tool[:-3]}", False)
    assert not any(n.split(".")[0] in ("tools", "detector_tools") for n in names)


def _test_files() -> list:
    return [os.path.join(folder, f) for folder, _, files in os.walk(os.path.join(ROOT, "tests")) for f in files
            if f.endswith(".py")]


def test_tests_import_the_tools_under_one_name():
    """The command-line tools are imported as ``detector_tools.X`` (the installed name), never as
    ``tools.X``, so that no module is loaded twice under two names; the checkout-only research
    scripts stay ``tools.analysis.X``."""
    tools = {f[:-3] for f in os.listdir(os.path.join(ROOT, "tools")) if f.endswith(".py") and f != "__init__.py"}
    offenders = []
    for path in _test_files():
        for name in _imports(path, "tests", False):
            parts = name.split(".")
            if parts[0] == "tools" and (len(parts) == 1 or parts[1] in tools):
                offenders.append(f"{os.path.relpath(path, ROOT)}: {name}")
    assert offenders == []
