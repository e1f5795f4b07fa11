"""Triton Python-backend model ``exdd_scorer`` (or ``exdd_<product>_scorer``): FEATURES (B, h, w, d) -> SCORE, IS_DEFECT, ANOMALY_MAP, SCORE_NEG, SCORE_POS.

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
from exdd_scoring.triton_config import config_parameter  # noqa: E402


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


# ---- decision metrics: Triton custom metrics through the Python backend's metrics API -----------------------
# Served on the server's Prometheus endpoint (/metrics), labelled by model, product, version and mode, so a drift
# of one product's score distribution (or a swap of its banks) shows in a standard dashboard.

DEFAULT_PRODUCT = "default"   # the product label of a one-product repository (exdd.serving.products.DEFAULT_LABEL)
SCORE_BUCKET_FACTORS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0)   # x the served threshold
LOG_SCORE_BUCKETS = tuple(10.0 ** (e / 2.0) for e in range(-6, 7))               # without a threshold


def score_buckets(threshold):
    """Histogram bucket bounds: around the threshold when there is one, else log-spaced 1e-3 .. 1e3."""
    if threshold is None or not threshold > 0:
        return list(LOG_SCORE_BUCKETS)
    return [float(threshold) * f for f in SCORE_BUCKET_FACTORS]


class DecisionMetrics:
    """exdd_images_scored_total, exdd_defects_flagged_total (counters), exdd_score (histogram), exdd_threshold (gauge)."""

    def __init__(self, version, mode, threshold, model="exdd_scorer", product=DEFAULT_PRODUCT):
        fam = pb_utils.MetricFamily
        labels = {"model": str(model), "product": str(product), "version": str(version), "mode": str(mode)}
        self.families = [
            fam(name="exdd_images_scored_total", description="Images scored by exdd_scorer", kind=fam.COUNTER),
            fam(name="exdd_defects_flagged_total", description="Images answered IS_DEFECT=true", kind=fam.COUNTER),
            fam(name="exdd_score", description="Image scores of the served mode", kind=fam.HISTOGRAM),
            fam(name="exdd_threshold", description="Served decision threshold (NaN: none)", kind=fam.GAUGE)]
        self.scored = self.families[0].Metric(labels=labels)
        self.flagged = self.families[1].Metric(labels=labels)
        self.score = self.families[2].Metric(labels=labels, buckets=score_buckets(threshold))
        self.threshold = self.families[3].Metric(labels=labels)
        self.threshold.set(float("nan") if threshold is None else float(threshold))

    def record(self, scores, flags):
        """Count one answered request's images."""
        self.scored.increment(float(len(scores)))
        self.flagged.increment(float(np.count_nonzero(flags)))
        for v in np.asarray(scores, dtype=np.float64).reshape(-1):
            if math.isfinite(v):
                self.score.observe(float(v))

    def close(self):
        """Metrics before their families (the backend requires that order)."""
        self.scored = self.flagged = self.score = self.threshold = None
        self.families = None


def is_warmup(feats, xp):
    """Whether a request is the model_warmup sample (zero_data: every feature exactly 0), which no image yields:
    the extractor's features of any picture, a black one included, are not all zero."""
    return not bool(xp.any(feats))


def make_metrics(version, mode, threshold, model, product):
    """DecisionMetrics, or None (scoring goes on) when this backend has no metrics API."""
    try:
        return DecisionMetrics(version, mode, threshold, model, product)
    except Exception as e:  # noqa: BLE001 - metrics must never stop the scorer
        try:
            pb_utils.Logger.log_warn(f"{model}: custom metrics disabled ({e})")
        except Exception:  # noqa: BLE001
            pass
        return None


class TritonPythonModel:
    """The ExDD scorer."""

    def initialize(self, args):
        """Load and verify the banks on this instance's device."""
        config = json.loads(args["model_config"])
        self.name = args.get("model_name", "exdd_scorer")     # exdd_scorer, or exdd_<product>_scorer
        version_dir = os.path.join(args["model_repository"], str(args["model_version"]))
        features_path = os.path.join(version_dir, "features.json")
        expected = None   # without features.json (banks copied into the committed template) exdd_features checks
        if os.path.exists(features_path):
            try:
                with open(features_path) as f:
                    expected = exdd_scoring.FeatureSpec.from_json(f.read(), features_path)
            except (OSError, ValueError) as e:
                raise RuntimeError(f"{self.name}: cannot read {features_path}: {e}") from None
        try:
            banks = exdd_scoring.load_banks(os.path.join(version_dir, "banks"), expected_features=expected)
        except exdd_scoring.BankError as e:
            raise RuntimeError(f"{self.name}: refusing to load: {e}") from None
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
            raise RuntimeError(f"{self.name}: refusing to load: {e}") from None
        self.scorer = exdd_scoring.Scorer(banks, xp=xp, sigma=sigma, searchers=searchers)
        self.mode = config_parameter(config, "mode", self.scorer.default_mode)
        if self.mode not in exdd_scoring.MODES:
            raise RuntimeError(f"{self.name}: config parameter mode {self.mode!r} is not one of {exdd_scoring.MODES}")
        thr = config_parameter(config, "threshold", "none")
        if thr == "none":
            thr = self.scorer.thresholds.get(self.mode)
        self.threshold = None if thr is None else parse_threshold(thr, "config parameter")
        self.product = config_parameter(config, "product", DEFAULT_PRODUCT)
        self.metrics = make_metrics(args["model_version"], self.mode, self.threshold,
                                    self.name, self.product)

    def _record_metrics(self, score, threshold, feats):
        """Decision metrics of one answered request; Triton's warm-up sample is answered but not counted."""
        if self.metrics is not None and not is_warmup(feats, self.xp):
            flags = (score >= threshold) if threshold is not None else np.zeros(len(score), dtype=bool)
            try:
                self.metrics.record(score, flags)
            except Exception:  # noqa: BLE001 - never fail a request over its metrics
                pass

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
        return (self._host(out.scores[self.mode]), self._host(out.s_neg), self._host(out.s_pos),
                self._host(out.maps[self.mode]))

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
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {e}"))
        if good:
            try:
                feats = good[0][1] if len(good) == 1 else self.xp.concatenate([g[1] for g in good])
                parts = self._score(feats)
                start = 0
                for i, f, thr in good:
                    n = int(f.shape[0])
                    responses[i] = self._response(*(p[start:start + n] for p in parts), thr)
                    self._record_metrics(parts[0][start:start + n], thr, f)
                    start += n
            except Exception:  # noqa: BLE001 - retry one by one so one failure cannot sink the batch
                for i, f, thr in good:
                    try:
                        parts = self._score(f)
                        responses[i] = self._response(*parts, thr)
                        self._record_metrics(parts[0], thr, f)
                    except Exception as e:  # noqa: BLE001
                        responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {e}"))
        return responses

    def finalize(self):
        """Release the banks and this version's metrics."""
        self.scorer = None
        if getattr(self, "metrics", None) is not None:
            self.metrics.close()
            self.metrics = None
