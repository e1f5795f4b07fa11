"""The package layers, checked on the import graph itself: every import points down the data flow
(exdd_scoring < exdd base < offline < export < serving < client < report < the entry points), no two
files import each other even through a chain, the scoring package and the Triton models import only
what a Triton Python backend has, and no package file imports scripts/ or tests/.

Every project .py file is parsed with ``ast``: top-level and function-level imports, relative ones
resolved, and ``importlib.import_module("literal")`` calls (the CLI's lazy sub-commands).
"""

from __future__ import annotations

import ast
import os
import sys
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout (tests/unit/..)
MODEL_REPOSITORY = os.path.join(ROOT, "model_repository")

# Lowest first; a module may import its own layer or a lower one. The base layer is every module of
# the `exdd` package that is not an entry point.
LAYERS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("scoring", ("exdd_scoring",)),
    ("base", ("exdd",)),
    ("offline", ("exdd.offline",)),
    ("export", ("exdd.export",)),
    ("serving", ("exdd.serving",)),
    ("client", ("exdd.client",)),
    ("report", ("exdd.report",)),
    ("entry", ("exdd.cli", "exdd.demo")),
)
ENTRY_POINTS = ("exdd.cli", "exdd.demo")
# Imports forbidden although they point down: the thin client reaches the server only over the network (the model
# names it shares with the server are exdd_scoring.model_names).
FORBIDDEN: Tuple[Tuple[str, str], ...] = (("client", "serving"),)
# Runtime libraries the scoring package imports lazily, inside the function that needs them (never at import
# time: the scorer's Python has numpy only, a GPU instance's cupy too).
SCORING_RUNTIME_IMPORTS = {"onnxruntime", "openvino", "faiss"}
LAZY_ONLY = SCORING_RUNTIME_IMPORTS | {"cupy"}
SCORING_ALLOWED = {"numpy", "cupy", "exdd_scoring"} | SCORING_RUNTIME_IMPORTS
# The one scoring module that decodes and resizes pictures (client, bank build and the server's exdd_preprocess
# model call it) may import Pillow too; no other scoring module may, and exdd_scoring/__init__ does not import it.
PILLOW_MODULES = {"exdd_scoring.picture"}
TRITON_MODEL_ALLOWED = {"numpy", "cupy", "exdd_scoring", "triton_python_backend_utils"}
OUTSIDE = ("scripts", "tests")  # may import anything, never imported by the package


@dataclass(frozen=True)
class Import:
    """One import statement's target as written (absolute), where it is and whether it is inside a function."""

    target: str
    line: int
    lazy: bool


def package_dirs() -> Dict[str, str]:
    """pyproject.toml's package-dir: package name -> folder (the only place the mapping is written)."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-dir"]


def project_modules() -> Dict[str, str]:
    """Every importable project module (dotted name) -> its file, from the package-dir folders."""
    modules: Dict[str, str] = {}
    for package, folder in package_dirs().items():
        base = os.path.join(ROOT, folder)
        for dirpath, dirnames, filenames in os.walk(base):  # symlinks (the models' exdd_scoring) not followed
            dirnames[:] = sorted(
                d for d in dirnames if d != "__pycache__" and os.path.isfile(os.path.join(dirpath, d, "__init__.py"))
            )
            rel = os.path.relpath(dirpath, base)
            prefix = package if rel == "." else package + "." + rel.replace(os.sep, ".")
            for name in sorted(filenames):
                if not name.endswith(".py"):
                    continue
                stem = name[:-3]
                if stem == "__init__":
                    modules[prefix] = os.path.join(dirpath, name)
                elif os.path.isfile(os.path.join(dirpath, "__init__.py")):
                    modules[prefix + "." + stem] = os.path.join(dirpath, name)
    return modules


def triton_models() -> List[str]:
    """The model.py files of the committed Triton model repository."""
    return sorted(
        os.path.join(MODEL_REPOSITORY, m, "1", "model.py")
        for m in os.listdir(MODEL_REPOSITORY)
        if os.path.isfile(os.path.join(MODEL_REPOSITORY, m, "1", "model.py"))
    )


def _resolve(module: str, is_package: bool, level: int, name: Optional[str]) -> str:
    """The absolute name of a (possibly relative) import found in module."""
    if level == 0:
        return name or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + ([name] if name else []))


def imports_of(path: str, module: str = "", is_package: bool = False) -> Iterator[Import]:
    """Every import in the file: statements at any depth and importlib.import_module("...") calls."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    lazy_lines: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lazy_lines.update(n.lineno for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom, ast.Call)))
    for node in ast.walk(tree):
        lazy = getattr(node, "lineno", 0) in lazy_lines
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno, lazy)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:  # `from pkg import sub` imports the module pkg.sub when there is one
                yield Import(f"{base}.{alias.name}" if alias.name != "*" else base, node.lineno, lazy)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "import_module")
            )
        ):
            yield Import(node.args[0].value, node.lineno, lazy)


def project_target(name: str, modules: Dict[str, str]) -> Optional[str]:
    """The project module an import of name loads (the longest known prefix), or None for third-party/stdlib."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def layer_of(module: str) -> int:
    """The index in LAYERS of a project module (the longest matching package prefix wins)."""
    best, best_len = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best >= 0, f"{module}: in no layer of tests/test_layers.py LAYERS (add it there)"
    return best


def graph(modules: Dict[str, str]) -> Dict[str, Dict[str, Import]]:
    """module -> {imported project module: the first import of it}; self-imports and the parent package dropped."""
    out: Dict[str, Dict[str, Import]] = {}
    for module, path in modules.items():
        edges: Dict[str, Import] = {}
        for imp in imports_of(path, module, path.endswith("__init__.py")):
            target = project_target(imp.target, modules)
            if target is not None and target != module:
                edges.setdefault(target, imp)
        out[module] = edges
    return out


def layer_violations(g: Dict[str, Dict[str, Import]], modules: Dict[str, str]) -> List[str]:
    """Imports pointing to a higher layer (or into an entry point), one line each."""
    bad = []
    for module, edges in sorted(g.items()):
        for target, imp in sorted(edges.items()):
            mine, theirs = layer_of(module), layer_of(target)
            into_entry = target in ENTRY_POINTS and module not in ENTRY_POINTS
            if theirs > mine or into_entry:
                bad.append(
                    f"{os.path.relpath(modules[module], ROOT)}:{imp.line}: {module} ({LAYERS[mine][0]}) "
                    f"imports {target} ({LAYERS[theirs][0]}){' inside a function' if imp.lazy else ''}"
                )
    return bad


def forbidden_imports(g: Dict[str, Dict[str, Import]], modules: Dict[str, str]) -> List[str]:
    """Imports between the layer pairs of FORBIDDEN, one line each."""
    bad = []
    for module, edges in sorted(g.items()):
        for target, imp in sorted(edges.items()):
            pair = (LAYERS[layer_of(module)][0], LAYERS[layer_of(target)][0])
            if pair in FORBIDDEN:
                bad.append(
                    f"{os.path.relpath(modules[module], ROOT)}:{imp.line}: {module} ({pair[0]}) imports "
                    f"{target} ({pair[1]}){' inside a function' if imp.lazy else ''}"
                )
    return bad


def cycles(g: Dict[str, Dict[str, Import]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(g) + 100))
    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(found)


def outside_imports(name: str) -> bool:
    """Whether an import names scripts/ or tests/ (or a module living there)."""
    top = name.split(".")[0]
    local = {
        os.path.splitext(f)[0]
        for d in OUTSIDE
        for _, _, files in os.walk(os.path.join(ROOT, d))
        for f in files
        if f.endswith(".py")
    }
    return top in OUTSIDE or top in local


def foreign_imports(path: str, allowed: Set[str], module: str = "model") -> List[str]:
    """Imports of a file that are neither the standard library nor in allowed, or of a LAZY_ONLY library at
    import time, one line each."""
    bad = []
    for imp in imports_of(path, module, path.endswith("__init__.py")):
        top = imp.target.split(".")[0]
        where = os.path.relpath(path, ROOT) if path.startswith(ROOT) else path
        if top and top not in sys.stdlib_module_names and top not in allowed:
            bad.append(f"{where}:{imp.line}: imports {imp.target}")
        elif top in LAZY_ONLY and not imp.lazy:
            bad.append(f"{where}:{imp.line}: imports {imp.target} at import time (only inside the function needing it)")
    return bad


@pytest.fixture(scope="module")
def modules() -> Dict[str, str]:
    return project_modules()


@pytest.fixture(scope="module")
def import_graph(modules) -> Dict[str, Dict[str, Import]]:
    return graph(modules)


def test_the_module_walk_finds_every_layer_and_only_project_files(modules):
    assert {
        "exdd_scoring.spec",
        "exdd.images",
        "exdd.offline.build",
        "exdd.offline.synth.run",
        "exdd.export.onnx_export",
        "exdd.serving.repository",
        "exdd.client.score",
        "exdd.report.html",
        "exdd.cli",
        "exdd.demo",
    } <= set(modules)
    assert {layer_of(m) for m in modules} == set(range(len(LAYERS)))
    assert not any("model_repository" in p or os.sep + "scripts" + os.sep in p for p in modules.values())


def test_every_import_points_to_the_same_or_a_lower_layer(import_graph, modules):
    bad = layer_violations(import_graph, modules)
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


def test_the_client_never_imports_the_server_package(import_graph, modules):
    bad = forbidden_imports(import_graph, modules)
    assert not bad, "forbidden imports:\n" + "\n".join(bad)


def test_a_client_import_of_serving_is_found(tmp_path, modules):
    bad = forbidden_imports(
        graph(
            m := _with_import(tmp_path, modules, "exdd.client.cli", "from exdd.serving.products import ProductModels")
        ),
        m,
    )
    assert any("exdd.client.cli (client) imports exdd.serving.products (serving) inside a function" in b for b in bad)


def test_no_import_cycle_between_files(import_graph):
    found = cycles(import_graph)
    assert not found, "files importing each other (directly or through a chain): " + "; ".join(
        " <-> ".join(c) for c in found
    )


def test_the_scoring_package_imports_only_the_stdlib_numpy_cupy_and_its_runtimes(modules):
    bad = [
        line
        for m, p in modules.items()
        if layer_of(m) == 0
        for line in foreign_imports(p, SCORING_ALLOWED | ({"PIL"} if m in PILLOW_MODULES else set()), m)
    ]
    assert not bad, "exdd_scoring must run in a bare Triton Python backend:\n" + "\n".join(bad)


def test_triton_models_import_only_their_own_exdd_scoring_numpy_cupy_and_the_backend():
    models = triton_models()
    names = {os.path.basename(os.path.dirname(os.path.dirname(p))) for p in models}
    assert names == {"exdd_features", "exdd_preprocess", "exdd_scorer"}
    for path in models:
        bad = foreign_imports(path, TRITON_MODEL_ALLOWED)
        assert not bad, "a Triton model imports what its folder does not hold:\n" + "\n".join(bad)
        if any(i.target.split(".")[0] == "exdd_scoring" for i in imports_of(path)):
            own = os.path.join(os.path.dirname(path), "exdd_scoring")
            assert os.path.realpath(own) == os.path.realpath(os.path.join(ROOT, "exdd_scoring")), (
                f"{path} imports exdd_scoring but {own} is not the scoring package"
            )


def test_the_package_never_imports_scripts_or_tests(modules):
    bad = [
        f"{os.path.relpath(p, ROOT)}:{i.line}: imports {i.target}"
        for m, p in modules.items()
        for i in imports_of(p, m, p.endswith("__init__.py"))
        if outside_imports(i.target)
    ]
    assert not bad, "\n".join(bad)


def _with_import(tmp_path, modules: Dict[str, str], module: str, line: str) -> Dict[str, str]:
    """A copy of modules where module's file has one more (function-level) import line."""
    src = modules[module]
    fake = tmp_path / ("__init__.py" if src.endswith("__init__.py") else os.path.basename(src))
    fake.write_text(open(src, encoding="utf-8").read() + f"\n\ndef _added():\n    {line}\n")
    return {**modules, module: str(fake)}


def test_a_lazy_import_up_the_layers_is_found(tmp_path, modules):
    bad = layer_violations(
        graph(
            m := _with_import(tmp_path, modules, "exdd.offline.build", "from exdd.client.results import ResultWriter")
        ),
        m,
    )
    assert any("exdd.offline.build (offline) imports exdd.client.results (client) inside a function" in b for b in bad)


def test_a_relative_import_cycle_is_found(tmp_path, modules):
    with_cycle = _with_import(tmp_path, modules, "exdd.serving.model_files", "from .repository import assemble")
    found = cycles(graph(with_cycle))
    assert any({"exdd.serving.model_files", "exdd.serving.repository"} <= set(c) for c in found)


def test_an_import_into_an_entry_point_is_found(tmp_path, modules):
    bad = layer_violations(graph(m := _with_import(tmp_path, modules, "exdd.report.cli", "import exdd.demo")), m)
    assert any("imports exdd.demo" in b for b in bad)


def test_a_third_party_import_in_the_scoring_package_is_found(tmp_path):
    fake = tmp_path / "bad.py"
    fake.write_text(
        "import numpy\nimport json\nimport cupy\n\ndef f():\n    import torch\n"
        "    from exdd import images\n    import faiss\n"
    )
    assert [b.split(": ", 1)[1] for b in foreign_imports(str(fake), SCORING_ALLOWED)] == [
        "imports cupy at import time (only inside the function needing it)",
        "imports torch",
        "imports exdd.images",
    ]


def test_no_other_scoring_module_loads_the_picture_module(import_graph):
    """Pillow stays out of the scorer and features models: within exdd_scoring nothing imports picture.py (only
    exdd_preprocess's model.py, the base layer's exdd.images and the client do)."""
    importers = sorted(m for m, edges in import_graph.items() if layer_of(m) == 0 and set(edges) & PILLOW_MODULES)
    assert not importers, f"scoring modules importing {sorted(PILLOW_MODULES)}: {importers}"
    assert "exdd_scoring.picture" in import_graph["exdd.images"]
