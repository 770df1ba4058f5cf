"""Static checks of the import graph, read from the AST of every module under packages/ and
examples/: no import cycles, and plugins reach the host only through ``adcore.api``.

Imports inside ``if TYPE_CHECKING:`` never run, so they are left out; imports inside
functions run when the function is called, so they count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("packages/*/src"), *ROOT.glob("examples/*/src")])


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of every distribution."""
    found = {}
    for src in SOURCES:
        for path in src.rglob("*.py"):
            parts = list(path.relative_to(src).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    return skipped


def imported_names(name: str, path: Path) -> set[str]:
    """Every dotted name the module imports at run time (relative imports made absolute)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _type_checking_nodes(tree)
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def _owner(dotted: str) -> str | None:
    """The project module a dotted name lives in (``a.b.c`` -> ``a.b`` if that is a module)."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        targets = {_owner(n) for n in imported_names(name, path)}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_known_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_packages():
    assert MODULES, "no modules found"
    assert cycles(import_graph()) == []


PLUGIN_MODULES = [name for name, path in MODULES.items() if not name.startswith("adcore")]


@pytest.mark.parametrize("name", PLUGIN_MODULES)
def test_plugins_import_the_host_only_through_adcore_api(name):
    host = {
        n for n in imported_names(name, MODULES[name]) if n == "adcore" or n.startswith("adcore.")
    }
    outside = sorted(n for n in host if n != "adcore.api" and not n.startswith("adcore.api."))
    assert outside == [], f"{MODULES[name]} imports {outside}; import from adcore.api instead"


def test_every_distribution_is_checked():
    distributions = {path.parent.name for path in SOURCES}
    assert {"adcore", "ad-datasets", "ad-patchcore", "ad-plugin-example"} <= distributions
    assert any(name.startswith("ad_plugin_example") for name in PLUGIN_MODULES)
