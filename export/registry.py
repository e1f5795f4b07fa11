"""The features backends a repository can serve the extractor with: one registry, CLI choices come from it.

Adding a backend is one ``register(FeaturesBackend(...))`` here (plus its test): the repository
assembler copies ``model_file`` (and ``model.py`` for Python-backend ones) and the config template
gets ``platform`` / ``backend`` filled in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional


@dataclass(frozen=True)
class FeaturesBackend:
    """How Triton runs exdd_features."""
    name: str
    model_file: str                   # file in exdd_features/1/
    platform: Optional[str] = None    # config `platform` (ONNX Runtime, TensorRT backends)
    backend: Optional[str] = None     # config `backend` (Python backend)
    needs_engine: bool = False        # a TensorRT plan built on the serving GPU (--engine)
    python_model: bool = False        # copy exdd_features/1/model.py
    help: str = ""


FEATURES_BACKENDS: Dict[str, FeaturesBackend] = {}


def register(b: FeaturesBackend) -> FeaturesBackend:
    """Add a backend (names are unique)."""
    if b.name in FEATURES_BACKENDS:
        raise ValueError(f"features backend {b.name!r} is already registered")
    FEATURES_BACKENDS[b.name] = b
    return b


register(FeaturesBackend("onnxruntime", "model.onnx", platform="onnxruntime_onnx",
                         help="Triton's ONNX Runtime backend (any standard Triton container)"))
register(FeaturesBackend("tensorrt_plan", "model.plan", platform="tensorrt_plan", needs_engine=True,
                         help="a TensorRT engine built on the serving GPU (fastest)"))
register(FeaturesBackend("python", "model.onnx", backend="python", python_model=True,
                         help="ONNX Runtime inside a Python-backend model (servers with only the Python backend)"))
