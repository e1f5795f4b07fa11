"""The features backends a repository can serve the extractor with: one registry, CLI choices come from it.

Adding a backend is one ``register(FeaturesBackend(...))`` here (plus its test): the repository
assembler copies ``model_file`` (and ``model.py`` for Python-backend ones) and the config template
gets ``platform`` / ``backend`` filled in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from exdd.registry import register_unique


@dataclass(frozen=True)
class FeaturesBackend:
    """How Triton runs exdd_features."""

    name: str
    model_file: str  # file in exdd_features/1/
    platform: Optional[str] = None  # config `platform` (ONNX Runtime, TensorRT backends)
    backend: Optional[str] = None  # config `backend` (Python backend)
    needs_engine: bool = False  # a TensorRT plan built on the serving GPU (--engine)
    python_model: bool = False  # copy exdd_features/1/model.py
    parameters: Tuple[Tuple[str, str], ...] = ()  # config parameters model.py reads (runtime, precision)
    cpu_only: bool = False  # KIND_GPU instances refused
    help: str = ""


FEATURES_BACKENDS: Dict[str, FeaturesBackend] = {}


def register(b: FeaturesBackend) -> FeaturesBackend:
    """Add a backend (names are unique)."""
    return register_unique(FEATURES_BACKENDS, b, "features backend")


register(
    FeaturesBackend(
        "onnxruntime",
        "model.onnx",
        platform="onnxruntime_onnx",
        help="Triton's ONNX Runtime backend (any standard Triton container)",
    )
)
register(
    FeaturesBackend(
        "tensorrt_plan",
        "model.plan",
        platform="tensorrt_plan",
        needs_engine=True,
        help="a TensorRT engine built on the serving GPU (fastest)",
    )
)
register(
    FeaturesBackend(
        "python",
        "model.onnx",
        backend="python",
        python_model=True,
        parameters=(("runtime", "onnxruntime"),),
        help="ONNX Runtime inside a Python-backend model (servers with only the Python backend)",
    )
)
register(
    FeaturesBackend(
        "python-openvino",
        "model.onnx",
        backend="python",
        python_model=True,
        parameters=(("runtime", "openvino"), ("inference_precision", "bf16")),
        cpu_only=True,
        help="OpenVINO bf16 inside a Python-backend model, CPU only: ~2x fp32 on CPUs with "
        "AVX-512 BF16 / AMX (f32 on others); check its parity first (export onnx --precision "
        "bf16); needs openvino in the server's Python",
    )
)


@dataclass(frozen=True)
class ExtractorPrecision:
    """One way to run the extractor on a CPU: how it is exported, served and reproduced offline."""

    name: str
    export_precision: str  # `exdd export onnx --precision`
    features_backend: str  # `exdd export repository --features-backend`
    offline_runtime: Optional[str]  # `--extractor-runtime` that reproduces the served features (None: torch)
    help: str = ""


EXTRACTOR_PRECISIONS: Dict[str, ExtractorPrecision] = {
    p.name: p
    for p in (
        ExtractorPrecision("fp32", "fp32", "python", None, "ONNX Runtime fp32 (the reference; the CPU default)"),
        ExtractorPrecision(
            "bf16",
            "bf16",
            "python-openvino",
            "openvino-bf16",
            "OpenVINO bf16: ~2x fp32 on AVX-512 BF16 CPUs, missed score parity on ksdd1_dev",
        ),
        ExtractorPrecision(
            "int8",
            "int8",
            "python",
            "onnxruntime",
            "ONNX Runtime static int8: ~3x fp32, missed score parity on the dev sets",
        ),
    )
}
