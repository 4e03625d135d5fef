"""The dependency direction of DESIGN.md, checked on the import graph of the jaxviz package.

    cli -> jobs -> (methods, index, render, data) -> models -> runtime;  errors below all

Every module's AST is read, function-level imports included. A module may import its own
package and any layer below its own; besides, DESIGN.md says that `methods/` never reads files
(it imports neither data/ nor render/), `render/` never computes attributions (no methods/),
`data/` knows nothing of models, and no job imports the CLI (the layers cover that one).
"""

import ast
from pathlib import Path

import jaxviz

ROOT = Path(jaxviz.__file__).parent
# package (first name under jaxviz; "" is jaxviz/__init__.py; api and results are public Python
# API beside it) -> layer, top first
LAYER = {
    "": 5,
    "cli": 5,
    "results": 5,
    "api": 5,
    "jobs": 4,
    "methods": 3,
    "index": 3,
    "render": 3,
    "data": 3,
    "models": 2,
    "runtime": 1,
    "errors": 0,
    "assets": 0,
}
# edges between packages of one layer that DESIGN.md rules out: (importer, imported) -> rule
FORBIDDEN = {
    ("methods", "data"): "methods/ never reads files",
    ("methods", "render"): "methods/ are pure algorithms; pictures belong to render/",
    ("render", "methods"): "render/ never computes attributions",
    ("data", "models"): "data/ knows nothing of models",
}
# (importer module, imported module) pairs tolerated for now, each with the reason
KNOWN: set[tuple[str, str]] = set()  # (module, imported) edges tolerated for now: none


def _module_name(path: Path) -> str:
    parts = ("jaxviz", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every jaxviz module `module` imports, anywhere in the file."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            if base == "jaxviz":  # `from jaxviz import jobs`: the submodules themselves
                found |= {f"jaxviz.{a.name}" for a in node.names if (ROOT / a.name).exists()}
                found |= {
                    f"jaxviz.{a.name}" for a in node.names if (ROOT / f"{a.name}.py").exists()
                }
    return {m for m in found if m == "jaxviz" or m.startswith("jaxviz.")}


def _package(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def import_graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p, _module_name(p)) for p in sorted(ROOT.rglob("*.py"))}


def test_no_module_imports_a_layer_above_it_or_a_forbidden_neighbour():
    graph = import_graph()
    assert len(graph) > 50 and "jaxviz.jobs.registry" in graph  # the walk saw the package
    bad = []
    for module, imported in graph.items():
        src = _package(module)
        for target in sorted(imported):
            dst = _package(target)
            if dst == src or (module, target) in KNOWN:
                continue
            if src not in LAYER or dst not in LAYER:
                bad.append(f"{module} -> {target}: package not placed in a layer (LAYER)")
            elif LAYER[dst] > LAYER[src]:
                bad.append(f"{module} -> {target}: imports a layer above it")
            elif (src, dst) in FORBIDDEN:
                bad.append(f"{module} -> {target}: {FORBIDDEN[(src, dst)]}")
    assert bad == [], "\n".join(bad)


def test_known_exceptions_are_still_needed():
    """An exception that no longer matches an import must be dropped from KNOWN."""
    graph = import_graph()
    assert [e for e in KNOWN if e[1] not in graph.get(e[0], set())] == []


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    code = "def f():\n    from jaxviz.cli import main\n\nfrom ..models import stage\n"
    path = tmp_path / "x.py"
    path.write_text(code)
    assert _imports(path, "jaxviz.jobs.x") == {"jaxviz.cli", "jaxviz.models"}
