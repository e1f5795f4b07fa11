"""An exported extractor (ONNX, e.g. the int8 one) run by ONNX Runtime in place of the torch module.

``OnnxExtractor`` is called like the torch extractor (uint8 NHWC tensor in, float32 features tensor
out), so ``extract`` and ``offline build`` use it unchanged; the fingerprint stored in the ONNX must
match the torch extractor's, so banks built with it serve with that ONNX.
"""
from __future__ import annotations

import os
from typing import Any, Dict

import numpy as np


class OnnxExtractor:
    """ONNX Runtime session with the torch extractor's call signature."""

    def __init__(self, onnx_path: str, threads: int = 0):
        import onnxruntime as ort

        from exdd.export.onnx_export import read_features, read_metadata
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or max(1, os.cpu_count() or 1)
        self.path = onnx_path
        self.features: Dict[str, Any] = read_features(onnx_path)
        self.precision = read_metadata(onnx_path).get("exdd.precision", "fp32")
        self.sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])

    def __call__(self, images: Any) -> Any:
        import torch
        x = np.ascontiguousarray(images.numpy() if hasattr(images, "numpy") else images, dtype=np.uint8)
        return torch.from_numpy(self.sess.run(["FEATURES"], {"IMAGE": x})[0])
