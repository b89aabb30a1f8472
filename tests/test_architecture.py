"""The layout's rules, checked on the code: imports only go down, no import circles, no huge modules.

The import graph is read from the source with `ast` (nothing is imported): every `import distill...`
and `from distill... import ...` anywhere in a module, inside functions and `if TYPE_CHECKING:`
blocks included, since a lazy import is still a dependency. An edge goes to the module imported
(`from distill.teachers import registry` is an edge to distill.teachers.registry), or to the
package when a name is taken from its `__init__`.

Every imported module must exist: an editable install of an older distill elsewhere on the path
would otherwise answer an import of a module that has moved, and the suite would not notice.

LAYERS is the architecture, bottom up (ARCHITECTURE.md draws it): a package may import its own
modules and the packages of lower layers. Packages that share a layer are peers and do not import
each other. A new package or top-level module must be placed in LAYERS before it can import
anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "distill"
MAX_LINES = 500

LAYERS: tuple[tuple[str, ...], ...] = (
    ("distill.errors",),                       # the error tree
    ("distill.config",),                       # paths and environment
    ("distill.checks",),                       # objective checks on text
    ("distill.records",),                      # files on disk: prompts, JSONL, ids, locks
    ("distill.student",),                      # the student model
    ("distill.teachers",),                     # the teacher client layer (a local teacher runs a student)
    ("distill.stages", "distill.training", "distill.serving"),  # one round; LoRA training; serving the student (peers)
    ("distill.evaluation",),                   # evaluate, gate, rounds, report, review
    ("distill.api",),                          # distill.run/train/evaluate: the functions the CLI is a thin layer over
    ("distill", "distill.testing"),            # the package's face (`from distill import Student`); the scripted teacher
    ("distill.cli",),                          # one module per verb
    ("distill.__main__",),                     # `python -m distill`
)


def modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` under `root`, by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """module -> {imported module of the same package: the line of its first import}."""
    known = modules(root, package)
    graph: dict[str, dict[str, int]] = {}
    for name, path in known.items():
        edges: dict[str, int] = {}
        for node, base, names in _imports(name, path):
            for target in _targets(base, names, known):
                if target.split(".")[0] == package:
                    edges.setdefault(target, node.lineno)
        edges.pop(name, None)
        graph[name] = edges
    return graph


def missing_modules(root: Path, package: str) -> list[str]:
    """`FILE:LINE: module` for every import of a module of `package` that does not exist."""
    known = modules(root, package)
    missing = []
    for name, path in known.items():
        for node, base, names in _imports(name, path):
            for module in [base] if base else names:
                if module.split(".")[0] == package and module not in known:
                    missing.append(f"{path.relative_to(root)}:{node.lineno}: {module}")
    return missing


def _imports(name: str, path: Path) -> list[tuple[ast.stmt, str, list[str]]]:
    """(statement, the module a `from` imports from, the names imported) for every import in the file;
    for `import a.b` the base is empty and the names are the modules. Relative imports are resolved."""
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[ast.stmt, str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.append((node, "", [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node, base, [alias.name for alias in node.names]))
    return found


def _targets(base: str, names: list[str], known: dict[str, Path]) -> list[str]:
    if not base:
        return [_deepest(name, known) for name in names]
    return [f"{base}.{name}" if f"{base}.{name}" in known else _deepest(base, known) for name in names]


def _deepest(dotted: str, known: dict[str, Path]) -> str:
    """The longest prefix of `dotted` that is a module (an attribute path ends at its module)."""
    parts = dotted.split(".")
    while len(parts) > 1 and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts)


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One import circle per strongly connected group of modules, as a path that returns to its start."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_circle(group, graph) for group in groups]


def _circle(group: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """A path through `group` from its first module back to it (breadth first: a shortest one)."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node]):
            if nxt == start:
                return paths[node] + [start]
            if nxt in members and nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    raise AssertionError(f"no circle through {group}")  # pragma: no cover - a strongly connected group has one


def describe(circle: list[str], graph: dict[str, dict[str, int]], root: Path) -> str:
    steps = [f"{a} -> {b} ({_file(a, root)}:{graph[a][b]})" for a, b in zip(circle, circle[1:])]
    return "import circle: " + "; ".join(steps)


def _file(module: str, root: Path) -> str:
    path = root / Path(*module.split("."))
    return str((path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(root))


def unit(module: str) -> str:
    """The package (or top-level module) a module belongs to: what LAYERS places."""
    parts = module.split(".")
    return ".".join(parts[:2])


LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


# ---------------------------------------------------------------- the rules, on distill itself

@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph(ROOT, PACKAGE)


def test_no_module_imports_itself_back_through_others(graph) -> None:
    found = cycles(graph)
    assert not found, "\n".join(describe(c, graph, ROOT) for c in found) + \
        "\nbreak it: move what both sides need to a module below both, or invert the dependency"


def test_every_imported_module_exists() -> None:
    # An editable install elsewhere can still answer an import of a module that moved away: catch it here.
    missing = missing_modules(ROOT, PACKAGE)
    assert not missing, "imports of modules that do not exist:\n" + "\n".join(missing)


def test_every_package_has_a_layer(graph) -> None:
    missing = sorted({unit(m) for m in graph} - set(LAYER_OF))
    assert not missing, f"not in LAYERS of tests/test_architecture.py (and ARCHITECTURE.md): {missing}"


def test_imports_only_go_down(graph) -> None:
    wrong = []
    for module, edges in sorted(graph.items()):
        mine = unit(module)
        for target, line in sorted(edges.items()):
            theirs = unit(target)
            if theirs == mine or mine not in LAYER_OF or theirs not in LAYER_OF:
                continue
            if LAYER_OF[theirs] >= LAYER_OF[mine]:
                relation = "a peer of" if LAYER_OF[theirs] == LAYER_OF[mine] else "above"
                wrong.append(f"{_file(module, ROOT)}:{line}: {module} imports {target}, but {theirs} "
                             f"(layer {LAYER_OF[theirs]}) is {relation} {mine} (layer {LAYER_OF[mine]})")
    assert not wrong, "imports must only go down the LAYERS:\n" + "\n".join(wrong)


def test_no_module_is_over_500_lines() -> None:
    long = {str(path.relative_to(ROOT)): n for path in modules(ROOT, PACKAGE).values()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them along their concepts): {long}"


def test_every_package_says_what_it_owns_and_what_it_may_import() -> None:
    vague = []
    for name, path in modules(ROOT, PACKAGE).items():
        if path.name != "__init__.py" or name == PACKAGE:
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if not all(part in doc for part in ("Owns:", "May import:", "Must not import:")):
            vague.append(str(path.relative_to(ROOT)))
    assert not vague, f"package docstrings without 'Owns:', 'May import:' and 'Must not import:': {vague}"


# ---------------------------------------------------------------- the checker itself

def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


def test_a_planted_circle_is_found_even_through_a_lazy_import(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low.py": "def f():\n    from pkg.high import g\n    return g\n",
        "pkg/mid.py": "from pkg import low\n",
        "pkg/high.py": "from pkg.mid import low\n\ndef g():\n    return 1\n",
        "pkg/apart.py": "import os\n",
    })
    graph = import_graph(root, "pkg")
    found = cycles(graph)
    assert found == [["pkg.high", "pkg.mid", "pkg.low", "pkg.high"]]
    assert describe(found[0], graph, root) == ("import circle: pkg.high -> pkg.mid (pkg/high.py:1); "
                                               "pkg.mid -> pkg.low (pkg/mid.py:1); "
                                               "pkg.low -> pkg.high (pkg/low.py:2)")


def test_names_taken_from_a_package_are_edges_to_its_init_and_relative_imports_resolve(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "pkg/__init__.py": "from pkg.sub.leaf import VALUE\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/leaf.py": "VALUE = 1\nimport pkg.sub.other as o\n",
        "pkg/sub/other.py": "from . import leaf\nfrom .. import VALUE\nimport typing\n",
    })
    graph = import_graph(root, "pkg")
    assert graph == {"pkg": {"pkg.sub.leaf": 1}, "pkg.sub": {}, "pkg.sub.leaf": {"pkg.sub.other": 2},
                     "pkg.sub.other": {"pkg.sub.leaf": 1, "pkg": 2}}
    assert [c[:-1] for c in cycles(graph)] == [["pkg", "pkg.sub.leaf", "pkg.sub.other"]]


def test_an_import_of_a_module_that_moved_away_is_found(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/new.py": "VALUE = 1\n",
        "pkg/user.py": "from pkg.new import VALUE\nfrom pkg.old import VALUE\n\ndef f():\n    import pkg.gone\n",
    })
    assert missing_modules(root, "pkg") == ["pkg/user.py:2: pkg.old", "pkg/user.py:5: pkg.gone"]
