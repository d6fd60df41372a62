"""featx's floors, read from its source with `ast`: imports only go down, no circles, short functions.

Imports inside functions count too: a lazy import still ties two layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import featx

PACKAGE = Path(featx.__file__).parent

# Lowest first; a module may import its own subpackage and the floors below it, never beside or above.
FLOORS = {"_core": 0, "data": 1, "evaluation": 1, "models": 2, "features": 3, "artifacts": 4, "heads": 5,
          "finetuning": 5, "labelling": 6, "sites": 6, "studies": 7, "reporting": 8, "exporting": 8, "demo": 9, "cli": 10,
          "__init__": 10, "__main__": 11}
LONGEST_FUNCTION = 60


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the featx package."""
    return {".".join(("featx", *f.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__"): f
            for f in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known) -> set[str]:
    """The featx modules that module `name` imports, anywhere in its body."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            for alias in node.names:
                target = f"{module}.{alias.name}"
                found.add(target if target in known else module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {t for t in found if t in known and t != name}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def floor(module: str) -> tuple[str, int]:
    part = module.split(".")[1] if "." in module else "__init__"
    return part, FLOORS[part]


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None


def test_imports_are_read_relative_and_inside_functions():
    graph = import_graph()
    assert "featx.features.store" in graph["featx.features.extraction"]  # from .store import ...
    assert "featx.models.backbones" in graph["featx.features.transformer"]  # imported inside a method
    assert "featx._core.errors" in graph["featx"]


def test_no_import_circle():
    assert find_cycle(import_graph()) is None


def test_every_module_has_a_floor_and_imports_only_its_own_subpackage_or_lower_floors():
    upward = []
    for module, targets in import_graph().items():
        home, level = floor(module)
        for target in targets:
            there, target_level = floor(target)
            if there != home and target_level >= level:
                upward.append(f"{module} -> {target}")
    assert not upward, upward
    assert len({floor(m)[0] for m in modules()} - {"cli", "__init__", "__main__"}) >= 5


def test_subpackage_inits_import_nothing():
    for path in PACKAGE.glob("*/__init__.py"):
        tree = ast.parse(path.read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))], path


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_is_longer_than_60_lines(path):
    long = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > LONGEST_FUNCTION]
    assert not long, long
