"""The import rules of docs/architecture.md (issue 14), read from the source with ``ast``.

Every import counts, the ones inside functions too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("petray", "actors", "serve", "bench", "tests")
# The one module of the core that may reach up to the Ray and HTTP layers.
BOOTSTRAP = "petray.bootstrap"


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {
        _module_name(path): path
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
        if ".venv" not in path.parts
    }
    return {
        name: {other for other in _imports(path) if other in modules and other != name}
        for name, path in modules.items()
    }


GRAPH = _graph()


def _package(module: str) -> str:
    return module.split(".")[0]


def _edges_between(source: str, target: str) -> list[tuple[str, str]]:
    return sorted(
        (module, other)
        for module, others in GRAPH.items()
        for other in others
        if _package(module) == source and _package(other) == target
    )


def test_the_core_reaches_up_only_through_its_bootstrap() -> None:
    upward = [
        edge
        for target in ("actors", "serve", "bench", "tests")
        for edge in _edges_between("petray", target)
        if edge[0] != BOOTSTRAP
    ]
    assert upward == []


def test_the_http_layer_does_not_import_the_ray_layer() -> None:
    # The Serve deployment that joins them lives in actors/http.py.
    assert _edges_between("serve", "actors") == []


def test_benchmarks_import_no_tests() -> None:
    assert _edges_between("bench", "tests") == []


def test_the_import_graph_has_no_circle() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in GRAPH[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert circles == []


def test_the_graph_sees_imports() -> None:
    # The rules above would pass on an empty graph: make sure the reader finds real edges.
    assert "petray.site.storage" in GRAPH["actors.gateway"]
    assert "actors.gateway" in GRAPH[BOOTSTRAP]
