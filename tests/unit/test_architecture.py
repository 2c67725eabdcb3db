"""The library's shape: the layers contract, no import cycles, templates in tfstack.render."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "src" / "tfstack"
FIXTURE = ROOT / "tests" / "fixtures" / "layering"
# import-linter's own command line, beside this interpreter; a separate process keeps its console
# away from pytest's captured streams.
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(
    config: Path, *, extra_path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH")]))
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _module_name(path: Path, source: Path) -> str:
    parts = path.relative_to(source.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(source: Path) -> dict[str, set[str]]:
    """Each module of the package at ``source`` and the package's modules it imports.

    Every import statement counts, at module level or inside a function; ``from a import b``
    names the submodule ``a.b`` when there is one, else ``a`` itself.
    """
    package = source.name
    files = {_module_name(path, source): path for path in source.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.split(".")[0] == package)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = module if is_package else module.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                if base.split(".")[0] != package:
                    continue
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.add(submodule if submodule in files else base)
        graph[module] = {t for t in targets if t in files and t != module}
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> Iterator[None]:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                yield from visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            for _ in visit(node):
                pass
    return found


def test_layers_contract_is_kept() -> None:
    """Every tfstack module imports only from layers below its own (pyproject's contract)."""
    result = lint_imports(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tfstack layers KEPT" in result.stdout


def test_layers_contract_fails_on_an_upward_import() -> None:
    """A lower layer importing a higher one, even inside a function, breaks a layers contract."""
    result = lint_imports(FIXTURE / "contract.ini", extra_path=FIXTURE)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "layered_app.low -> layered_app.high" in result.stdout


def test_no_import_cycles_among_tfstack_modules() -> None:
    """No group of tfstack modules imports itself round, counting function-level imports."""
    graph = import_graph(SOURCE)
    assert "tfstack.spec.load" in graph["tfstack.spec"]  # the walk sees the real imports
    assert cycles(graph) == []


def test_cycle_check_sees_function_level_imports() -> None:
    """The cycle check finds a cycle closed by an import inside a function."""
    graph = import_graph(FIXTURE / "layered_app")
    assert cycles(graph) == [["layered_app.high", "layered_app.low"]]


def test_templates_live_in_the_render_package() -> None:
    """The Jinja templates ship inside tfstack.render (package data for wheels)."""
    spec = importlib.util.find_spec("tfstack.render")
    assert spec is not None and spec.submodule_search_locations
    templates = Path(next(iter(spec.submodule_search_locations))) / "templates"
    assert (templates / "compose" / "docker-compose.yml.j2").is_file()
    assert (templates / "config" / "models.config.j2").is_file()
