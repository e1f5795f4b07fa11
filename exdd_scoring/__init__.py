"""ExDD scoring math, written once against an ``xp`` array module (numpy or cupy).

This package lives inside the Triton models so that a model repository deploys by copying it;
the offline evaluator imports the same files as ``exdd_scoring``. It must only ever import numpy
(and cupy when given), json, hashlib and the standard library.

Names are loaded lazily (``from exdd_scoring import Scorer`` imports ``scorer`` when first asked
for): importing one module loads only what it imports, so each model folder holds only the modules
its model.py needs (``exdd.serving.model_files.scoring_modules``).
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module defining it
_EXPORTS = {
    "bank": (
        "BANK_FORMAT_VERSION",
        "Bank",
        "BankError",
        "BankPair",
        "FEATURE_KEYS",
        "load_banks",
        "load_projection",
        "read_manifest",
        "read_manifest_features",
        "read_manifest_spec",
        "save_bank",
    ),
    "manifest": ("MANIFEST_VERSION", "BankManifest", "ManifestError"),
    "spec": ("FeatureSpec", "SpecError"),
    "knn": ("nearest", "topk_nearest"),
    "resample": ("upsample_smooth_matrices", "upsample_smooth"),
    "scores": (
        "DEFAULT_MODE",
        "MAP_KINDS",
        "MODE_REGISTRY",
        "MODES",
        "Evidence",
        "Mode",
        "image_scores",
        "register_mode",
        "reweight_q",
    ),
    "score_batch": ("ScoreBatch",),
    "scorer": ("Scorer", "map_of_mode"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = list(_MODULE_OF)


def __getattr__(name: str) -> Any:
    """An exported name (its module imported on first use) or a submodule (``exdd_scoring.ann``)."""
    module = _MODULE_OF.get(name)
    if module is None:
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
