"""The packages' import graph, read with `ast`: dependencies point one way (evaluate -> morse -> baselines), the
harness imports no accelerator (it finds them through entry points), and no module imports itself round a circle."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("baselines", "morse", "evaluate")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imported(name: str, path: Path, modules) -> set[str]:
    """The project modules `name` imports anywhere in its file (function-level imports included: an import
    deferred into a function still ties the two modules together)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package `level - 1` steps above this one
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return {m for m in found if m in modules or m.split(".")[0] in PACKAGES} - {name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_dependencies_point_one_way():
    forbidden = {"evaluate": ("morse", "baselines.accelerators"), "morse": ("evaluate",),
                 "baselines": ("morse", "evaluate")}
    bad = [f"{m} imports {i}" for m, imports in _graph().items() for i in sorted(imports)
           for package, banned in forbidden.items() if _under(m, package) and any(_under(i, b) for b in banned)]
    assert not bad, bad


def test_no_import_cycle():
    graph = _graph()
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_the_graph_sees_the_imports():
    """The checks above are only as good as the graph: it finds the edges we know are there."""
    graph = _graph()
    assert "baselines.solvers" in graph["morse.sampler"] and "baselines.methods" in graph["morse.methods"]
    assert "baselines.methods" in graph["evaluate.methods"] and "evaluate.cost" in graph["evaluate.run"]
