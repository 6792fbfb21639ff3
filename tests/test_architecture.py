"""The house rules of docs/architecture.md, checked on the source: every import of a vqt module points to the
same layer or one below it, and no modules import each other in a circle — counting imports inside functions,
which hide a cycle from Python but not from a reader. A small AST walk: no import-linter dependency to install."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom to top. A module belongs to the layer of the longest prefix that names it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("vqt.errors", "vqt.io", "vqt.precision", "vqt.seeding", "vqt.checkpoint.files"),  # leaves
    ("vqt.data",),
    ("vqt.distributed",),
    ("vqt.backbone",),
    ("vqt.methods",),
    ("vqt.features",),
    ("vqt.training",),
    ("vqt.bench",),
    ("vqt.checkpoint",),
    ("vqt.hub",),
    ("vqt.rundir",),
    ("vqt.report",),
    ("vqt.protocol",),
    ("vqt.inference",),
    ("vqt.viz", "vqt.demo"),
    ("vqt.cli", "vqt.__main__", "_vqt_launcher"),
)
# The package root is the public facade (lazy exports); below it, only its metadata may be imported from it.
ROOT_NAMES_ALLOWED = {"DISTRIBUTION", "__version__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, set[str], int]]:
    """(imported module, names taken from it, line) for every import statement of a vqt module in `path`."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            if base.split(".")[0] in ("vqt", "_vqt_launcher"):
                found.append((base, {a.name for a in node.names}, node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((a.name, set(), node.lineno) for a in node.names if a.name.split(".")[0] == "vqt")
    return found


def source_graph() -> tuple[dict[str, dict[str, int]], dict[str, set[str]]]:
    """module -> {imported vqt module: line}, and module -> names it takes from the package root."""
    paths = sorted(SRC.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph: dict[str, dict[str, int]] = {}
    root_names: dict[str, set[str]] = {}
    for path in paths:
        edges: dict[str, int] = {}
        for target, names, line in imports_of(path):
            if target == "vqt":
                submodules = {f"vqt.{n}" for n in names} & modules
                root_names.setdefault(module_name(path), set()).update(names - {n[4:] for n in submodules})
                edges.update(dict.fromkeys(submodules, line))
                continue
            # `from vqt.report import tables` imports the module vqt.report.tables
            named = {f"{target}.{n}" for n in names} & modules
            edges.update(dict.fromkeys(named or {target}, line))
        graph[module_name(path)] = edges
    return graph, root_names


def layer_of(module: str) -> int:
    best, depth = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = index, prefix.count(".")
    return best


def upward_imports(graph: Mapping[str, Mapping[str, int]]) -> list[str]:
    problems = []
    for module, edges in graph.items():
        if module == "vqt":
            continue
        for target, line in edges.items():
            if target != "vqt" and layer_of(target) > layer_of(module):
                problems.append(f"{module} (line {line}) imports {target}, a higher layer")
    return problems


def cycles(graph: Mapping[str, Mapping[str, int]]) -> list[list[str]]:
    """Every import cycle (each once, as found by a depth-first search) among the modules of `graph`."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for target in graph.get(node, {}):
            if target not in graph or target == "vqt":
                continue
            if state.get(target) == "open":
                found.append([*stack[stack.index(target):], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_every_module_has_a_layer() -> None:
    graph, _ = source_graph()
    assert [m for m in graph if m != "vqt" and layer_of(m) < 0] == []


def test_imports_point_down_only() -> None:
    graph, _ = source_graph()
    assert upward_imports(graph) == []


def test_no_import_cycles() -> None:
    graph, _ = source_graph()
    assert cycles(graph) == []


def test_only_metadata_is_taken_from_the_package_root() -> None:
    _, root_names = source_graph()
    taken = {m: names - ROOT_NAMES_ALLOWED for m, names in root_names.items()}
    assert {m: n for m, n in taken.items() if n} == {}


def test_the_checks_catch_a_planted_violation() -> None:
    """The checks themselves can fail: an upward import and a two-module circle are reported."""
    planted = {"vqt.data.lists": {"vqt.protocol.sweep": 3}, "vqt.protocol.sweep": {"vqt.data.lists": 9}}
    assert upward_imports(planted) == ["vqt.data.lists (line 3) imports vqt.protocol.sweep, a higher layer"]
    assert cycles(planted) == [["vqt.data.lists", "vqt.protocol.sweep", "vqt.data.lists"]]
