"""The committed Triton model files (model.py, config.pbtxt templates) as package data, and copying them out."""
from __future__ import annotations

import importlib.resources
import os
from importlib.abc import Traversable
from pathlib import Path


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
            raise ModelFilesError(f"the Triton model files are not installed with exdd ({root}): reinstall exdd") from None
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
