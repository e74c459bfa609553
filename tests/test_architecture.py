"""The shape of src/ (issue #10): no import cycle anywhere, no emulation module reaching into
another package's private names, and small files and functions (600 / 80 lines). The import
graph is read statically (ast): an import inside a function is an edge too, because it ties
the modules together just the same.

Files that are still over the limits are listed in ``UNFINISHED`` and marked xfail (not
strict), so that each one that is split turns green without editing this test; the cycle and
private-name checks have no such list.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "tinytwin"
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
UNFINISHED: set[str] = set()  # still over a limit: to be split (issue #10); none left


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


MODULES = _modules()


def _imports(module: str, path: Path) -> list[tuple[str, str]]:
    """(imported module, imported name or '') of every import statement in ``path``."""
    base = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                up = base.split(".")[: len(base.split(".")) - node.level + 1]
                target = ".".join(up + ([target] if target else []))
            out += [(target, a.name) for a in node.names]
    return out


def _own(name: str) -> str | None:
    """The module of src/ that ``name`` (a module, or a module's attribute) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, p in MODULES.items():
        for target, name in _imports(m, p):
            for candidate in (f"{target}.{name}" if name else target, target):
                dep = _own(candidate)
                if dep and dep != m:
                    graph[m].add(dep)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    comps.append(sorted(comp))
    return comps


def test_no_import_cycles_in_src() -> None:
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_emulate_imports_no_private_name_of_another_package() -> None:
    found = []
    for m, p in MODULES.items():
        if not m.startswith("tinytwin.emulate"):
            continue
        for target, name in _imports(m, p):
            private = name.startswith("_") and not name.startswith("__")
            if private and not target.startswith("tinytwin.emulate"):
                found.append(f"{m} imports {target}.{name}")
    assert found == []


def _size_violations(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    out = [f"{len(lines)} lines"] if len(lines) > MAX_FILE_LINES else []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            if n > MAX_FUNCTION_LINES:
                out.append(f"{node.name}: {n} lines")
    return out


@pytest.mark.parametrize(
    "rel",
    [
        pytest.param(
            r,
            marks=pytest.mark.xfail(r in UNFINISHED, reason="still over the size limits (issue #10)", strict=False),
        )
        for r in sorted(str(p.relative_to(SRC)) for p in MODULES.values())
    ],
)
def test_file_and_its_functions_are_small(rel: str) -> None:
    assert _size_violations(SRC / rel) == []
