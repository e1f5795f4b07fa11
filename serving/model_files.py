"""The committed Triton model files (model.py, config.pbtxt templates) as package data, and copying them out
(each Python model with the modules of exdd_scoring its model.py imports, and only those)."""

from __future__ import annotations

import ast
import importlib.resources
import os
from importlib.abc import Traversable
from pathlib import Path
from typing import FrozenSet, Set

SCORING = "exdd_scoring"


class ModelFilesError(ValueError):
    """The model files are not installed with exdd; the message says how to fix it."""


def model_files() -> Traversable:
    """The committed model_repository/ (model.py files, config.pbtxt templates), as package data.

    Installed (wheel, ``pip install .``) it is the package-data folder ``exdd/model_repository``.
    setuptools' editable finder cannot resolve that folder (a namespace package mapped outside
    ``exdd/``), so an editable checkout falls back to the source tree beside ``exdd_scoring/``.
    """
    try:
        return importlib.resources.files("exdd.model_repository")
    except ModuleNotFoundError:
        root = Path(str(importlib.resources.files("exdd_scoring"))).parent / "model_repository"
        if not (root / "exdd_scorer" / "1" / "model.py").is_file():
            raise ModelFilesError(
                f"the Triton model files are not installed with exdd ({root}): reinstall exdd"
            ) from None
        return root


def copy_resource(src: Traversable, dest: str) -> None:
    """Copy a package-data file or folder to dest (folders recursively, no __pycache__ / .pyc)."""
    if src.is_dir():
        os.makedirs(dest, exist_ok=True)
        for child in src.iterdir():
            if child.name == "__pycache__" or child.name.endswith(".pyc"):
                continue
            copy_resource(child, os.path.join(dest, child.name))
    else:
        with open(dest, "wb") as f:
            f.write(src.read_bytes())


def _scoring_imports(source: str, where: str, in_package: bool) -> Set[str]:
    """The exdd_scoring modules a file imports (statements at any depth; in_package: its relative imports too).
    ModelFilesError for ``import exdd_scoring`` alone: which modules it uses cannot be read from the file."""
    from exdd_scoring import _MODULE_OF

    out: Set[str] = set()
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == SCORING:
                    if len(parts) == 1:
                        raise ModelFilesError(
                            f"{where}:{node.lineno}: `import {SCORING}` alone: import the modules "
                            f"it uses (from {SCORING}.MODULE import ...)"
                        )
                    out.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = [SCORING] + (node.module.split(".") if node.module else []) if in_package else []
            else:
                base = (node.module or "").split(".")
            if not base or base[0] != SCORING:
                continue
            if len(base) > 1:
                out.add(base[1])
                continue
            for alias in node.names:  # from exdd_scoring import picture / Scorer
                out.add(_MODULE_OF.get(alias.name, alias.name))
    return out


def scoring_modules(model_py: str, where: str = "model.py") -> FrozenSet[str]:
    """The exdd_scoring modules (file stems, __init__ included) that the model.py source imports, transitively."""
    package = importlib.resources.files(SCORING)
    need, todo = {"__init__"}, sorted(_scoring_imports(model_py, where, False))
    while todo:
        name = todo.pop()
        if name in need:
            continue
        src = package / f"{name}.py"
        if not src.is_file():
            raise ModelFilesError(f"{where} imports {SCORING}.{name}, which is not a module of {SCORING}")
        need.add(name)
        todo += sorted(_scoring_imports(src.read_text(encoding="utf-8"), f"{SCORING}/{name}.py", True) - need)
    return frozenset(need)


def copy_python_model(template: str, version_dir: str) -> None:
    """The committed model.py of model template, and the exdd_scoring modules it imports, into version_dir."""
    src = model_files() / template / "1" / "model.py"
    os.makedirs(os.path.join(version_dir, SCORING), exist_ok=True)
    copy_resource(src, os.path.join(version_dir, "model.py"))
    package = importlib.resources.files(SCORING)
    for name in sorted(scoring_modules(src.read_text(encoding="utf-8"), f"{template}/1/model.py")):
        copy_resource(package / f"{name}.py", os.path.join(version_dir, SCORING, f"{name}.py"))
