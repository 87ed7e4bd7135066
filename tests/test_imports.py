"""The package's shape: no import cycle (also none inside functions), imports only go down the layers,
and no file is longer than 400 lines.

Every import statement of every module is read with `ast` (module level, inside functions, inside
`if TYPE_CHECKING:`), so an import hidden in a function cannot hide a cycle.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dermlow"
# lower rank = lower layer; a module may import its own package, lower ranks, or (rank 0) its neighbours
LAYERS = [
    ("dermlow.errors", "dermlow.distributed", "dermlow.metrics", "dermlow.registry", "dermlow.settings",
     "dermlow.resources"),
    ("dermlow.data", "dermlow.method", "dermlow.models", "dermlow.evidence"),
    ("dermlow.config",),
    ("dermlow.rundir",),
    ("dermlow.training",),
    ("dermlow.bench",),
    ("dermlow.cli",),
    ("dermlow.__main__",),
]
FACADE = "dermlow"  # the package root re-exports `low_weights` (lazily): it may import anything, not in a cycle


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The dermlow modules that `path` (module `name`) imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import dermlow.data.isic.x` -> the longest known module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, name, set(known)) for name, path in known.items()}


def rank(name: str) -> int:
    for i, group in enumerate(LAYERS):
        if any(name == g or name.startswith(g + ".") for g in group):
            return i
    raise AssertionError(f"{name} is in no layer: add it to LAYERS in tests/test_imports.py (and docs/architecture.md)")


def package_of(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2])


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_parser_sees_imports_inside_functions_and_type_checking_blocks(tmp_path):
    fake = tmp_path / "dermlow" / "data"
    fake.mkdir(parents=True)
    (fake / "x.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dermlow.config import C\n"
                               "def f():\n    from dermlow.rundir import files\n    import dermlow.errors\n"
                               "    from . import y\n")
    known = {"dermlow.data.x", "dermlow.data.y", "dermlow.config", "dermlow.rundir", "dermlow.rundir.files",
             "dermlow.errors", "dermlow.data"}
    assert imports(fake / "x.py", "dermlow.data.x", known) == {
        "dermlow.config", "dermlow.rundir.files", "dermlow.errors", "dermlow.data.y"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_only_go_down_the_layers():
    wrong = []
    for name, targets in graph().items():
        if name == FACADE:
            continue
        for target in targets:
            if target == FACADE:
                wrong.append(f"{name} imports the package root {target}: import the module itself")
            elif package_of(target) == package_of(name) or rank(target) < rank(name):
                continue
            elif rank(target) == rank(name) == 0:
                continue  # the bottom layer's single modules may use each other (no cycle: see above)
            else:
                wrong.append(f"{name} (layer {rank(name)}) imports {target} (layer {rank(target)})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("folder", ["dermlow", "app", "tests", "benchmarks"])
def test_no_file_over_400_lines(folder):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
