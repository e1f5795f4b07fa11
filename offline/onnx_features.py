"""An exported extractor (ONNX) run in place of the torch module, by a runtime of ``exdd_scoring.runtimes``.

``OnnxExtractor`` is called like the torch extractor (uint8 NHWC tensor in, float32 features tensor
out), so ``extract`` and ``offline build`` use it unchanged; the fingerprint stored in the ONNX must
match the torch extractor's, so banks built with it serve with that ONNX (and the served model runs
the file through the same runtime code).
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from exdd_scoring.onnx_metadata import read_features
from exdd_scoring.runtimes import open_runtime


class OnnxExtractor:
    """An ONNX extractor with the torch extractor's call signature: onnxruntime (the file's precision) or openvino."""

    def __init__(self, onnx_path: str, threads: int = 0, runtime: str = "onnxruntime", precision: str = "bf16"):
        self.path = onnx_path
        self.features: Dict[str, Any] = read_features(onnx_path)
        self.runner = open_runtime(runtime, onnx_path, precision, threads)
        self.precision = self.runner.precision

    def __call__(self, images: Any) -> Any:
        import torch

        x = np.ascontiguousarray(images.numpy() if hasattr(images, "numpy") else images, dtype=np.uint8)
        return torch.from_numpy(self.runner.run(x))
