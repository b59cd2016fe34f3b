"""The package's import graph has no cycles.

Import cycles make the import order matter (a name is missing when a
half-initialised module is imported from), and they hide layering mistakes:
``view`` must not need ``viewdef``, a builtin view must not need the
decorators, nothing must need the package ``__init__``.  This test parses
every module with :mod:`ast`, imports inside functions included (they are
cycles all the same, only deferred), and fails naming a cycle if there is one.
Imports under ``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import metropc

PACKAGE_DIR = Path(metropc.__file__).resolve().parent
PACKAGE = "metropc"


def module_names() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join([PACKAGE, *parts])] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node, except those under ``if TYPE_CHECKING``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of the package it imports (anywhere in its code)."""
    modules = module_names()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from pkg import sub` imports the module pkg.sub; `from pkg
                # import name` imports pkg (its __init__) for the name.
                targets = []
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, str] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        trail = [start]
        iters = [iter(sorted(graph[start]))]
        state[start] = "active"
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[trail.pop()] = "done"
                iters.pop()
            elif state.get(nxt) == "active":
                return trail[trail.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = "active"
                trail.append(nxt)
                iters.append(iter(sorted(graph[nxt])))
    return None


def test_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "metropc.core" in graph["metropc.inprocess"]
    assert "metropc.viewdef" in graph["metropc.core"]
    # core imports `from . import context` inside a method
    assert "metropc.context" in graph["metropc.core"]
    # `from ..view import View` two levels up
    assert "metropc.view" in graph["metropc.builtin._util"]


def test_find_cycle_reports_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


#: Layers, lowest first: a module may import its own layer and those below.
LAYERS = [
    ("language", ["metropc._version", "metropc.enums", "metropc.error", "metropc.path",
                  "metropc.view", "metropc.viewdef", "metropc.builtin", "metropc.core",
                  "metropc.context", "metropc.euxfel", "metropc.roi"]),
    ("protocol", ["metropc.protocol", "metropc.protocol_arrays", "metropc.protocol_batch",
                  "metropc.protocol_layouts",
                  "metropc.transport", "metropc.endpoints",
                  "metropc.messages", "metropc.seqgaps", "metropc.security",
                  "metropc.config"]),
    ("engine", ["metropc.engine", "metropc.inprocess", "metropc.inputs", "metropc.client",
                "metropc.index",
                "metropc.controller", "metropc.timing"]),
    ("stages", ["metropc.stage", "metropc.sources", "metropc.frontend", "metropc.pipeline",
                "metropc.recording", "metropc.reprocess"]),
    ("apps", ["metropc.dashboard", "metropc.cli", "metropc.metrics", "metropc"]),
]


def layer_of(module):
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    return None if best is None else best[0]


def test_imports_go_one_way_between_layers():
    """Context language -> engine -> stages -> CLI and dashboard, never back."""
    graph = import_graph()
    unplaced = sorted(m for m in graph if layer_of(m) is None)
    assert not unplaced, f"modules in no layer: {unplaced}"
    wrong = [(m, t) for m, targets in graph.items() for t in targets
             if layer_of(t) is not None and layer_of(t) > layer_of(m)]
    assert not wrong, "imports upward: " + ", ".join(f"{m} -> {t}" for m, t in wrong)
