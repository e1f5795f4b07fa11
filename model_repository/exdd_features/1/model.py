"""Triton Python-backend model ``exdd_features``: IMAGE uint8 (B, H, W, 3) -> FEATURES float32 (B, h, w, d).

Runs ``model.onnx`` (beside this file) for servers that have the Python backend but no ONNX Runtime
backend, through a runtime of ``exdd_scoring.runtimes`` (the copy in this model's own version folder:
no file of another model is read, so pruning the scorer's versions never breaks this model) chosen by
the config parameters
``runtime`` (onnxruntime | openvino) and ``inference_precision`` (openvino: bf16 | f32). ONNX Runtime
KIND_GPU instances use the CUDAExecutionProvider when the installed onnxruntime has it (else CPU, with a
warning in the server log). The ONNX metadata must match ``features.json``, the fingerprint the
scorer's banks were checked against (without it, as in the committed template, the ONNX's own metadata
gives the input size and the scorer checks the feature shape).
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


def scoring_package(version_dir, name):
    """Put this version's own exdd_scoring package (numpy + stdlib) first on the path."""
    if not os.path.isdir(os.path.join(version_dir, "exdd_scoring")):
        raise RuntimeError(
            f"{name}: needs exdd_scoring/ beside model.py in {version_dir} "
            "(rebuild the repository with exdd export repository)"
        )
    if version_dir not in sys.path:
        sys.path.insert(0, version_dir)


class TritonPythonModel:
    """The feature extractor through ONNX Runtime or OpenVINO."""

    def initialize(self, args):
        """Open the runtime on this instance's device and check the ONNX file's fingerprint."""
        config = json.loads(args["model_config"])
        self.name = args["model_name"]  # exdd_features (exdd_scoring.model_names)
        version_dir = os.path.join(args["model_repository"], str(args["model_version"]))
        onnx_path = os.path.join(version_dir, "model.onnx")
        scoring_package(version_dir, self.name)
        from exdd_scoring.onnx_metadata import FEATURES_KEY
        from exdd_scoring.runtimes import open_runtime
        from exdd_scoring.spec import FeatureSpec
        from exdd_scoring.triton_config import config_parameter

        runtime = config_parameter(config, "runtime", "onnxruntime")
        precision = config_parameter(config, "inference_precision", "bf16")
        threads = int(config_parameter(config, "intra_op_threads", "0"))
        gpu = args.get("model_instance_kind") == "GPU"
        try:
            self.runner = open_runtime(
                runtime, onnx_path, precision, threads, int(args.get("model_instance_device_id", 0)) if gpu else None
            )
        except ImportError as e:
            raise RuntimeError(
                f"{self.name}: runtime {runtime!r} is not installed in the serving Python ({e})"
            ) from None
        if self.runner.note:
            pb_utils.Logger.log_warn(f"{self.name}: {self.runner.note}")
        stored = self.runner.metadata(FEATURES_KEY)
        if stored is None:
            raise RuntimeError(
                f"{self.name}: {onnx_path} has no {FEATURES_KEY} metadata (not made by "
                "exdd export onnx): rebuild the repository with exdd export repository"
            )
        exported = FeatureSpec.from_json(stored, f"{onnx_path} metadata")
        features_path = os.path.join(version_dir, "features.json")
        if os.path.exists(features_path):
            with open(features_path) as f:
                expected = FeatureSpec.from_json(f.read(), features_path)
            if not exported.matches(expected):
                raise RuntimeError(
                    f"{self.name}: {onnx_path} was not exported with the features in features.json "
                    "(model.onnx replaced?): rebuild the repository with exdd export repository"
                )
        else:  # the committed template: no fingerprint to check here; the scorer checks the feature shape
            pb_utils.Logger.log_warn(
                f"{self.name}: no features.json in {version_dir}; serving {onnx_path} "
                "without a fingerprint check (exdd export repository writes one)"
            )
        self.hw = exported.input_size

    def _images(self, request):
        """The request's IMAGE as a validated uint8 (B, H, W, 3) array."""
        tensor = pb_utils.get_input_tensor_by_name(request, "IMAGE")
        if tensor is None:
            raise ValueError("input IMAGE is missing")
        arr = tensor.as_numpy()
        if arr.dtype != np.uint8:
            raise ValueError(f"input IMAGE must be uint8, got {arr.dtype}")
        if arr.ndim != 4 or arr.shape[0] < 1 or tuple(arr.shape[1:]) != (*self.hw, 3):
            raise ValueError(f"input IMAGE of shape {tuple(arr.shape)}: expected (B>=1, {self.hw[0]}, {self.hw[1]}, 3)")
        return arr

    def execute(self, requests):
        """One run over all valid requests, split back per request; errors stay with their own request."""
        from exdd_scoring.batching import Parsed, run_batched

        def respond(feats, parsed):
            out = pb_utils.Tensor("FEATURES", np.ascontiguousarray(feats, dtype=np.float32))
            return pb_utils.InferenceResponse(output_tensors=[out])

        return run_batched(
            requests,
            lambda r: Parsed(self._images(r)),
            lambda batch, parsed: self.runner.run(batch),
            respond,
            lambda e: pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {e}")),
            np.concatenate,
        )

    def finalize(self):
        """Close the runtime."""
        self.runner = None
