"""The layout stays acyclic: rayrt's import graph, read from the sources (every import, at module
top or inside a function), has no cycle between packages and none between modules; and the
physics core never imports Ray, the HTTP stack or the service."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "rayrt"
CORE = ("config", "domain", "machines", "imaging", "contour", "dose", "optimize", "qa", "convert", "pipeline", "report")
NOT_IN_CORE = ("ray", "fastapi", "starlette", "httpx", "uvicorn", "rayrt.service", "rayrt.cli")


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The rayrt module an import of ``name`` loads (the longest known prefix), or None for another package."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks (annotations only: never run)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _imports(mod: str, path: Path) -> set[str]:
    """Every name ``mod`` imports (absolute), anywhere in the file but ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    skip = _type_checking_only(tree)
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")
                up = up[: len(up) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:  # `from pkg import module` loads pkg.module; `from mod import name` loads mod
                names.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return names


GRAPH = {m: {t for n in _imports(m, p) if (t := _resolve(n)) and t != m} for m, p in MODULES.items()}


def _package(mod: str) -> str:
    parts = mod.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else mod


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_graph_is_read_from_every_module():
    assert "rayrt.pipeline.recipe" in MODULES and "rayrt.service.app" in MODULES
    assert "rayrt.pipeline.runner" in GRAPH["rayrt.pipeline.recipe"]


def test_no_cycle_between_modules():
    # a package's __init__ re-exporting its modules is not a cycle of the code: leave those edges out
    graph = {
        m: {t for t in ts if not (MODULES[t].name == "__init__.py" and m.startswith(t + "."))}
        for m, ts in GRAPH.items()
    }
    cycle = _cycle(graph)
    assert cycle is None, "import cycle between modules: " + " -> ".join(cycle or [])


def test_no_cycle_between_packages():
    packages: dict[str, set[str]] = {}
    for m, ts in GRAPH.items():
        packages.setdefault(_package(m), set()).update(_package(t) for t in ts if _package(t) != _package(m))
    cycle = _cycle(packages)
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("package", CORE)
def test_core_never_imports_ray_http_or_the_service(package):
    for m, p in MODULES.items():
        if _package(m) != f"rayrt.{package}":
            continue
        bad = sorted(n for n in _imports(m, p) if any(n == x or n.startswith(x + ".") for x in NOT_IN_CORE))
        assert not bad, f"{m} imports {bad}"
