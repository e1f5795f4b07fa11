"""Runtimes that run the exported extractor (an ONNX file: IMAGE uint8 (B, H, W, 3) -> FEATURES float32).

A registry shared by the served ``exdd_features`` model (Python backend) and offline extraction from an
ONNX file (``offline build --extractor``), so both run the file the same way. Each runtime imports its
library only when opened (numpy + that library):

- ``onnxruntime``: the file as it is (fp32, or int8 QDQ), CPU or CUDA provider;
- ``openvino``: the fp32 file compiled by OpenVINO for the CPU at an inference precision: ``bf16`` uses the
  AVX-512 BF16 / AMX units where the CPU has them (OpenVINO runs f32 where it has not), ``f32`` is exact.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .onnx_metadata import PRECISION_KEY

OPENVINO_PRECISIONS = ("bf16", "f32")


class OnnxRuntimeRunner:
    """An ONNX Runtime session; ``device`` a CUDA device id (falls back to the CPU when the provider is absent);
    threads 0: the runtime's default."""

    name = "onnxruntime"

    def __init__(self, path: str, precision: str = "", threads: int = 0, device: Optional[int] = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads and threads > 0:  # else ONNX Runtime's default (one thread per physical core)
            opts.intra_op_num_threads = int(threads)
        providers: List[Any] = ["CPUExecutionProvider"]  # names, or (name, options)
        self.note = ""
        if device is not None:
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers = [("CUDAExecutionProvider", {"device_id": int(device)}), "CPUExecutionProvider"]
            else:
                self.note = "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu); running on CPU"
        self.session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        self.precision = self.metadata(PRECISION_KEY) or "fp32"

    def metadata(self, key: str) -> Optional[str]:
        """A metadata entry of the ONNX file, or None."""
        return self.session.get_modelmeta().custom_metadata_map.get(key)

    def run(self, images: np.ndarray) -> np.ndarray:
        """float32 features (B, h, w, d) of uint8 images (B, H, W, 3)."""
        return self.session.run(["FEATURES"], {"IMAGE": np.ascontiguousarray(images)})[0]


class OpenVinoRunner:
    """An fp32 ONNX file compiled by OpenVINO for the CPU at ``precision`` (bf16 | f32)."""

    name = "openvino"

    def __init__(self, path: str, precision: str = "bf16", threads: int = 0, device: Optional[int] = None):
        import openvino as ov

        if precision not in OPENVINO_PRECISIONS:
            raise ValueError(f"OpenVINO inference precision {precision!r}: expected one of {OPENVINO_PRECISIONS}")
        core = ov.Core()
        self.model = core.read_model(path)
        self.note = "OpenVINO runs on the CPU; the GPU instance kind is ignored" if device is not None else ""
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            self.note = "this CPU has no bf16 units: OpenVINO runs f32"
        config: Dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads and threads > 0:  # else OpenVINO's default (its CPU plugin picks the cores)
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(self.model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = precision

    def metadata(self, key: str) -> Optional[str]:
        """A metadata entry of the ONNX file (OpenVINO keeps them under rt_info 'framework'), or None."""
        if not self.model.has_rt_info(["framework", key]):
            return None
        return self.model.get_rt_info(["framework", key]).astype(str)

    def run(self, images: np.ndarray) -> np.ndarray:
        """float32 features (B, h, w, d) of uint8 images (B, H, W, 3)."""
        out = self.request.infer({0: np.ascontiguousarray(images)})[0]
        return np.array(out, dtype=np.float32, copy=True)


RUNTIMES: Dict[str, Callable[..., object]] = {r.name: r for r in (OnnxRuntimeRunner, OpenVinoRunner)}


def open_runtime(name: str, path: str, precision: str = "", threads: int = 0, device: Optional[int] = None):
    """The runner of runtime ``name`` over the ONNX file at path (ValueError naming the choices when unknown)."""
    if name not in RUNTIMES:
        raise ValueError(f"runtime {name!r}: expected one of {tuple(RUNTIMES)}")
    return RUNTIMES[name](path, precision, threads, device)
