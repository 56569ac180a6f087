"""ruff and the import contracts are part of the test suite, so `./run test` (and CI) fails on either."""

import contextlib
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean(processes):
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    result = processes.run([ruff, "check", "--no-cache", str(ROOT)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_import_contracts_are_kept(capsys):
    """`lint-imports` with the repository's contracts ([tool.importlinter] in pyproject.toml): among them,
    the casavi sandbox imports nothing from casavi_pipeline, so it judges what the pipeline sends."""
    from importlinter.cli import lint_imports

    with contextlib.chdir(ROOT):
        code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "sandbox imports nothing from casavi_pipeline" in printed  # the contract was checked


def _imports_at_load(path: Path, package: str) -> set[str]:
    """The casavi_pipeline modules a module depends on: its module-level imports, those for type checking
    included (a cycle there is still a cycle of concerns); an import inside a function is a deliberate
    late dependency and not counted."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:  # module level only: an import inside a function runs later, if ever
        for child in ast.walk(node) if not isinstance(node, ast.FunctionDef | ast.ClassDef) else ():
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith(package):
                found.add(child.module)
                found.update(f"{child.module}.{alias.name}" for alias in child.names)
            elif isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names if alias.name.startswith(package))
    return found


def test_the_package_has_no_import_cycles():
    package = "casavi_pipeline"
    modules = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in (ROOT / package).rglob("*.py")
    }
    graph = {name: _imports_at_load(path, package) & modules.keys() - {name} for name, path in modules.items()}
    for name, imported in graph.items():  # importing `a.b` loads package `a` first: not a dependency of `a`
        graph[name] = {m for m in imported if not name.startswith(m + ".")}
    seen: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> list[str] | None:
        seen[name] = 1
        for nxt in sorted(graph[name]):
            if seen.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt] if nxt in path else [*path, nxt]
            if nxt not in seen and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        seen[name] = 2
        return None

    for module in sorted(graph):
        if module not in seen and (cycle := visit(module, [module])):
            raise AssertionError("import cycle: " + " -> ".join(cycle))
