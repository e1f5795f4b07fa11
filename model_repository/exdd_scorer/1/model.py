"""Triton Python-backend model ``exdd_scorer``: FEATURES (B, h, w, d) -> SCORE, IS_DEFECT, ANOMALY_MAP, SCORE_NEG, SCORE_POS.

The banks are loaded once per instance, from ``banks/`` beside this file, and verified against
``features.json`` (the fingerprint of the exported extractor): banks made with other features
fail the load with a message naming the mismatch. KIND_GPU instances hold the banks on their
GPU with CuPy and take GPU inputs zero-copy via DLPack; KIND_CPU instances use NumPy.
Dynamic batching: all requests of one ``execute`` are scored in one pass and split again; a
malformed request gets its own error response and the others are answered normally.
Only numpy, cupy (GPU instances) and files of this model directory are imported.
"""
import json
import math
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import exdd_scoring  # noqa: E402  (the scoring package copied into this model directory)

OUTPUTS = ("SCORE", "IS_DEFECT", "ANOMALY_MAP", "SCORE_NEG", "SCORE_POS")


def config_parameter(config, key, default=None):
    """A string parameter of the model config, or default."""
    entry = (config.get("parameters") or {}).get(key)
    value = entry.get("string_value", "") if isinstance(entry, dict) else ""
    return value if value != "" else default


def parse_threshold(value, where):
    """A finite float from a JSON number or numeric string; ValueError otherwise (never evaluated)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{where} 'threshold' must be a number, got {type(value).__name__}")
    try:
        out = float(value)
    except ValueError:
        raise ValueError(f"{where} 'threshold' must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{where} 'threshold' must be finite, got {out}")
    return out


class TritonPythonModel:
    """The ExDD scorer."""

    def initialize(self, args):
        """Load and verify the banks on this instance's device."""
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], str(args["model_version"]))
        features_path = os.path.join(version_dir, "features.json")
        expected = None   # without features.json (banks copied into the committed template) exdd_features checks
        if os.path.exists(features_path):
            try:
                with open(features_path) as f:
                    expected = exdd_scoring.FeatureSpec.from_json(f.read(), features_path)
            except (OSError, ValueError) as e:
                raise RuntimeError(f"exdd_scorer: cannot read {features_path}: {e}") from None
        try:
            banks = exdd_scoring.load_banks(os.path.join(version_dir, "banks"), expected_features=expected)
        except exdd_scoring.BankError as e:
            raise RuntimeError(f"exdd_scorer: refusing to load: {e}") from None
        self.gpu = args.get("model_instance_kind") == "GPU"
        if self.gpu:
            import cupy
            self.cupy = cupy
            cupy.cuda.Device(int(args.get("model_instance_device_id", 0))).use()
            xp = cupy
        else:
            self.cupy = None
            xp = np
        self.xp = xp
        sigma = float(config_parameter(config, "sigma", "4.0"))
        try:  # an hnsw index in the banks (CPU instances only; GPU instances search exactly)
            searchers = exdd_scoring.ann.searchers_from_manifest(os.path.join(version_dir, "banks"), banks.manifest, xp)
        except exdd_scoring.BankError as e:
            raise RuntimeError(f"exdd_scorer: refusing to load: {e}") from None
        self.scorer = exdd_scoring.Scorer(banks, xp=xp, sigma=sigma, searchers=searchers)
        self.mode = config_parameter(config, "mode", self.scorer.default_mode)
        if self.mode not in exdd_scoring.MODES:
            raise RuntimeError(f"exdd_scorer: config parameter mode {self.mode!r} is not one of {exdd_scoring.MODES}")
        thr = config_parameter(config, "threshold", "none")
        if thr == "none":
            thr = self.scorer.thresholds.get(self.mode)
        self.threshold = None if thr is None else parse_threshold(thr, "config parameter")

    def _features(self, request):
        """The request's FEATURES as an xp array, validated (ValueError names the problem)."""
        tensor = pb_utils.get_input_tensor_by_name(request, "FEATURES")
        if tensor is None:
            raise ValueError("input FEATURES is missing")
        if tensor.is_cpu():
            arr = tensor.as_numpy()
            if self.gpu:
                arr = self.cupy.asarray(arr)
        else:
            import cupy
            arr = cupy.from_dlpack(tensor.to_dlpack())
            if not self.gpu:
                arr = cupy.asnumpy(arr)
        if arr.dtype != np.float32:
            raise ValueError(f"input FEATURES must be float32, got {arr.dtype}")
        self.scorer.check_features(arr)
        return arr

    def _threshold(self, request):
        """The request parameter 'threshold' if given, else the configured one (may be None)."""
        raw = request.parameters() if hasattr(request, "parameters") else "{}"
        params = json.loads(raw) if raw else {}
        if isinstance(params, dict) and "threshold" in params:
            return parse_threshold(params["threshold"], "request parameter")
        return self.threshold

    def _host(self, arr):
        """A NumPy copy of an xp array."""
        return self.cupy.asnumpy(arr) if self.gpu else np.asarray(arr)

    def _score(self, feats):
        """(score, s_neg, s_pos, map) as NumPy arrays for an xp batch."""
        out = self.scorer.score(feats, map_modes=(self.mode,), modes=(self.mode,))
        return (self._host(out["scores"][self.mode]), self._host(out["s_neg"]), self._host(out["s_pos"]),
                self._host(out["maps"][self.mode]))

    def _response(self, score, s_neg, s_pos, amap, threshold):
        """The inference response of one request."""
        col = lambda a: np.ascontiguousarray(a, dtype=np.float32).reshape(-1, 1)  # noqa: E731
        defect = (score >= threshold) if threshold is not None else np.zeros_like(score, dtype=bool)
        tensors = [pb_utils.Tensor("SCORE", col(score)),
                   pb_utils.Tensor("IS_DEFECT", np.ascontiguousarray(defect, dtype=bool).reshape(-1, 1)),
                   pb_utils.Tensor("ANOMALY_MAP", np.ascontiguousarray(amap, dtype=np.float32)),
                   pb_utils.Tensor("SCORE_NEG", col(s_neg)),
                   pb_utils.Tensor("SCORE_POS", col(s_pos))]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests):
        """Score every valid request in one pass; errors stay with their own request."""
        responses = [None] * len(requests)
        good = []  # (index, features, threshold)
        for i, request in enumerate(requests):
            try:
                good.append((i, self._features(request), self._threshold(request)))
            except Exception as e:  # noqa: BLE001 - any bad input is that request's error only
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"exdd_scorer: {e}"))
        if good:
            try:
                feats = good[0][1] if len(good) == 1 else self.xp.concatenate([g[1] for g in good])
                parts = self._score(feats)
                start = 0
                for i, f, thr in good:
                    n = int(f.shape[0])
                    responses[i] = self._response(*(p[start:start + n] for p in parts), thr)
                    start += n
            except Exception:  # noqa: BLE001 - retry one by one so one failure cannot sink the batch
                for i, f, thr in good:
                    try:
                        responses[i] = self._response(*self._score(f), thr)
                    except Exception as e:  # noqa: BLE001
                        responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"exdd_scorer: {e}"))
        return responses

    def finalize(self):
        """Release the banks."""
        self.scorer = None
