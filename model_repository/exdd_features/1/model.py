"""Triton Python-backend model ``exdd_features``: IMAGE uint8 (B, H, W, 3) -> FEATURES float32 (B, h, w, d).

Runs ``model.onnx`` (beside this file) with ONNX Runtime, for servers that have the Python
backend but no ONNX Runtime backend. KIND_GPU instances use the CUDAExecutionProvider when
the installed onnxruntime has it (else CPU, with a warning in the server log). The ONNX
metadata must match ``features.json``, the fingerprint the scorer's banks were checked against.
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

METADATA_KEY = "exdd.features"


def feature_spec_class(model_repository):
    """FeatureSpec from the scorer's exdd_scoring package beside this model (numpy + stdlib only)."""
    scorer_version = os.path.join(os.path.dirname(os.path.abspath(model_repository)), "exdd_scorer", "1")
    if scorer_version not in sys.path:
        sys.path.insert(0, scorer_version)
    try:
        from exdd_scoring.spec import FeatureSpec
    except ImportError as e:
        raise RuntimeError(f"exdd_features: needs exdd_scorer/1/exdd_scoring beside it ({e})") from None
    return FeatureSpec


def config_parameter(config, key, default=None):
    """A string parameter of the model config, or default."""
    entry = (config.get("parameters") or {}).get(key)
    value = entry.get("string_value", "") if isinstance(entry, dict) else ""
    return value if value != "" else default


class TritonPythonModel:
    """The feature extractor through ONNX Runtime."""

    def initialize(self, args):
        """Open the ONNX session on this instance's device and check its fingerprint."""
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], str(args["model_version"]))
        onnx_path = os.path.join(version_dir, "model.onnx")
        opts = ort.SessionOptions()
        threads = int(config_parameter(config, "intra_op_threads", "0"))
        if threads > 0:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                device = int(args.get("model_instance_device_id", 0))
                providers = [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]
            else:
                pb_utils.Logger.log_warn("exdd_features: KIND_GPU but onnxruntime has no CUDAExecutionProvider "
                                         "(install onnxruntime-gpu in the serving venv); running on CPU")
        self.session = ort.InferenceSession(onnx_path, sess_options=opts, providers=providers)
        spec = feature_spec_class(args["model_repository"])
        features_path = os.path.join(version_dir, "features.json")
        if os.path.exists(features_path):
            with open(features_path) as f:
                expected = spec.from_json(f.read(), features_path)
        else:   # the committed template with banks copied in: the ONNX must match the banks' manifest
            manifest = os.path.join(os.path.dirname(os.path.abspath(args["model_repository"])), "exdd_scorer", "1",
                                    "banks", "manifest.json")
            with open(manifest) as f:
                expected = spec.from_dict(json.load(f).get("features"), manifest)
        stored = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if stored is None or not spec.from_json(stored, f"{onnx_path} metadata").matches(expected):
            raise RuntimeError(f"exdd_features: {onnx_path} was not exported with the features in features.json "
                               "(model.onnx replaced?): rebuild the repository with exdd export repository")
        self.hw = expected.input_size
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

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
        """One ONNX Runtime run over all valid requests, split back per request."""
        responses = [None] * len(requests)
        good = []
        for i, request in enumerate(requests):
            try:
                good.append((i, self._images(request)))
            except Exception as e:  # noqa: BLE001
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"exdd_features: {e}"))
        if good:
            try:
                batch = good[0][1] if len(good) == 1 else np.concatenate([g[1] for g in good])
                feats = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch)})[0]
                start = 0
                for i, imgs in good:
                    n = imgs.shape[0]
                    out = pb_utils.Tensor("FEATURES", np.ascontiguousarray(feats[start:start + n], dtype=np.float32))
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[out])
                    start += n
            except Exception as e:  # noqa: BLE001
                for i, _ in good:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"exdd_features: {e}"))
        return responses

    def finalize(self):
        """Close the session."""
        self.session = None
