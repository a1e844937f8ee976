"""The package's import graph: no cycles, lazy imports inside functions included."""
import ast
import os
from typing import Dict, List, Set

import hrnet_quanteval

PACKAGE_DIR = os.path.dirname(hrnet_quanteval.__file__)


def module_files(package_dir: str, package: str) -> Dict[str, str]:
    """Dotted module name -> file, for every .py file under the package (``__init__`` as the package itself)."""
    found = {}
    for folder, _, files in os.walk(package_dir):
        rel = os.path.relpath(folder, package_dir)
        parts = [package] + ([] if rel == "." else rel.split(os.sep))
        for name in files:
            if name.endswith(".py"):
                dotted = parts if name == "__init__.py" else parts + [name[:-3]]
                found[".".join(dotted)] = os.path.join(folder, name)
    return found


def imports_of(name: str, path: str, modules: Set[str]) -> Set[str]:
    """Modules of the package that ``name`` imports anywhere in its file, and the packages those imports run."""
    is_package = path.endswith("__init__.py")
    here = name.split(".") if is_package else name.split(".")[:-1]
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    targets: Set[str] = set()
    for node in ast.walk(tree):  # every import statement, at module level or inside a function
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join(base + (node.module.split(".") if node.module else []))
            targets.add(module)
            targets |= {f"{module}.{alias.name}" for alias in node.names}  # `from . import run` names a module
    edges = set()
    for target in targets:
        parts = target.split(".")
        for end in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
            candidate = ".".join(parts[:end])
            if candidate in modules and candidate != name:
                edges.add(candidate)
    return edges


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles: List[List[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def import_graph(package_dir: str, package: str) -> Dict[str, Set[str]]:
    files = module_files(package_dir, package)
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGE_DIR, "hrnet_quanteval")
    assert len(graph) > 30 and "hrnet_quanteval.engines.native" in graph
    assert "hrnet_quanteval.runtypes" in graph["hrnet_quanteval.engines.native"]
    assert find_cycles(graph) == []


def test_the_walk_finds_a_cycle_made_by_a_lazy_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "low.py").write_text("def helper():\n    from .sub import high\n    return high\n")
    (package / "sub" / "high.py").write_text("from .. import low\n")
    (package / "alone.py").write_text("import os\n")
    graph = import_graph(str(package), "pkg")
    assert graph["pkg.low"] == {"pkg", "pkg.sub", "pkg.sub.high"}
    assert find_cycles(graph) == [["pkg.low", "pkg.sub.high"]]


def test_engines_and_the_run_sit_where_a_reader_looks_for_them():
    graph = import_graph(PACKAGE_DIR, "hrnet_quanteval")
    low = {"hrnet_quanteval.runtypes", "hrnet_quanteval.engines.base"}
    for engine in ("hrnet_quanteval.engines.native", "hrnet_quanteval.engines.reference"):
        assert low <= graph[engine], engine
        assert "hrnet_quanteval.run" not in graph[engine]  # engines never call up into the orchestrator
    assert not graph["hrnet_quanteval.runtypes"] & {"hrnet_quanteval.run", "hrnet_quanteval.engines.native"}
    for command in ("selftest", "parity", "bench"):
        assert "hrnet_quanteval.run" in graph[f"hrnet_quanteval.{command}"], command


def test_the_fp32_cache_key_changes_with_code_in_a_subpackage(tmp_path):
    import shutil

    from hrnet_quanteval.cache import source_fingerprint

    copy = tmp_path / "hrnet_quanteval"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = source_fingerprint(str(copy))
    assert before == source_fingerprint(PACKAGE_DIR)
    with open(copy / "engines" / "native.py", "a") as f:
        f.write("# a change deep in the package\n")
    assert source_fingerprint(str(copy)) != before
