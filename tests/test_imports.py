"""The package's module graph has no cycle and no *Refiner inherits from a package class
(STYLE.md 18, 19). Every import counts, at the top level, inside functions and under
`if TYPE_CHECKING:`: a cycle hidden in a function is still a seam that is missing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "sam2vss"
ROOT = Path(__file__).resolve().parents[1] / "python" / PACKAGE


def _module_names() -> dict[str, Path]:
    return {PACKAGE if p.stem == "__init__" else f"{PACKAGE}.{p.stem}": p for p in sorted(ROOT.glob("*.py"))}


def imported_modules(tree: ast.Module, modules: set[str]) -> set[str]:
    """The package modules a module imports anywhere in its tree. `from sam2vss import x` is an
    import of sam2vss.x when x is a module (of the package itself otherwise)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module in modules:
            subs = {f"{node.module}.{a.name}" for a in node.names}
            out |= subs & modules
            out |= {node.module} if subs - modules else set()
    return out


def import_graph() -> dict[str, set[str]]:
    paths = _module_names()
    return {m: imported_modules(ast.parse(p.read_text()), set(paths)) - {m} for m, p in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle, each once, starting at its smallest module (the graph has a few
    dozen nodes, so plain depth-first enumeration is quick)."""
    found = []

    def walk(start: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == start:
                found.append([*path, start])
            elif nxt > start and nxt not in path:
                walk(start, [*path, nxt])

    for start in sorted(graph):
        walk(start, [start])
    return found


def test_import_resolution_counts_every_import():
    modules = {PACKAGE, "sam2vss.a", "sam2vss.b", "sam2vss.c", "sam2vss.d"}
    src = """
from typing import TYPE_CHECKING
from sam2vss import a, __version__
if TYPE_CHECKING:
    from sam2vss.b import Thing
def f():
    import sam2vss.c
    from sam2vss.d import g
    import numpy
"""
    assert imported_modules(ast.parse(src), modules) == modules


def test_cycle_listing():
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "a"], ["a", "b", "c", "a"]]


def test_no_import_cycles():
    graph = import_graph()
    assert "sam2vss.config" in graph["sam2vss.metrics"], "the parser found no imports; it is broken"
    found = [" -> ".join(c) for c in cycles(graph)]
    print("\n".join(found))
    assert not found, f"{len(found)} import cycle(s):\n" + "\n".join(found)


def _package_bases(tree: ast.Module, module: str, classes: dict[str, set[str]]) -> dict[str, list[str]]:
    """{class name: its bases that are classes of the package}, for the classes of one module.
    Names resolve through the module's own classes, `from sam2vss.x import C` and `import
    sam2vss.x as x` / `from sam2vss import x` (for `x.C`)."""
    names = {c: module for c in classes[module]}  # local name -> defining module
    mods: dict[str, str] = {}  # local name -> package module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in classes:
            names |= {a.asname or a.name: node.module for a in node.names}
            mods |= {a.asname or a.name: f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            mods |= {a.asname or a.name: a.name for a in node.names if a.name in classes}

    def resolve(base: ast.expr) -> str | None:
        if isinstance(base, ast.Name) and base.id in classes.get(names.get(base.id, ""), ()):
            return f"{names[base.id]}.{base.id}"
        if isinstance(base, ast.Attribute):
            mod = mods.get(ast.unparse(base.value), ast.unparse(base.value))
            if base.attr in classes.get(mod, ()):
                return f"{mod}.{base.attr}"
        return None

    return {
        n.name: [b for b in map(resolve, n.bases) if b] for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
    }


def test_refiners_compose_not_inherit():
    trees = {m: ast.parse(p.read_text()) for m, p in _module_names().items()}
    classes = {m: {n.name for n in ast.walk(t) if isinstance(n, ast.ClassDef)} for m, t in trees.items()}
    refiners = {
        f"{m}.{name}": bases
        for m, t in trees.items()
        for name, bases in _package_bases(t, m, classes).items()
        if name.endswith("Refiner")
    }
    assert refiners, "found no *Refiner class; the scan is broken"
    bad = [f"{name}({', '.join(bases)})" for name, bases in refiners.items() if bases]
    print("\n".join(bad))
    assert not bad, "a refiner inherits from a package class (compose parts instead): " + ", ".join(bad)


@pytest.mark.parametrize(
    ("src", "want"),
    [
        ("class A: pass\nclass BRefiner(A): pass", ["m.A"]),
        ("from sam2vss.n import N\nclass BRefiner(N): pass", ["sam2vss.n.N"]),
        ("from sam2vss import n\nclass BRefiner(n.N): pass", ["sam2vss.n.N"]),
        ("import sam2vss.n as n\nclass BRefiner(n.N): pass", ["sam2vss.n.N"]),
        ("import torch\nclass BRefiner(torch.nn.Module): pass", []),
    ],
)
def test_package_base_resolution(src, want):
    classes = {PACKAGE: set(), "m": {"A", "BRefiner"}, "sam2vss.n": {"N"}}
    assert _package_bases(ast.parse(src), "m", classes)["BRefiner"] == want


def test_readme_module_table_lists_each_module_once():
    """README "Architecture": every module of the package exactly once (STYLE.md 2)."""
    import collections
    import re

    text = (ROOT.parents[1] / "README.md").read_text()
    table = text[text.index("| module | role |") : text.index("Native code:")]
    rows = [row for row in table.splitlines()[2:] if row.startswith("|")]
    listed = [m for row in rows for m in re.findall(r"`([a-z_]+)\.py`", row.split("|")[1])]
    modules = {p.stem for p in ROOT.glob("*.py") if not p.stem.startswith("__")}
    repeated = [m for m, n in collections.Counter(listed).items() if n > 1]
    assert not repeated, f"README lists these modules more than once: {repeated}"
    assert set(listed) == modules, (
        f"missing {sorted(modules - set(listed))}, unknown {sorted(set(listed) - modules)}"
    )
