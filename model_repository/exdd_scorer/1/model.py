"""Triton Python-backend model ``exdd_scorer`` (or ``exdd_<product>_scorer``): FEATURES (B, h, w, d) -> SCORE,
IS_DEFECT, ANOMALY_MAP, SCORE_NEG, SCORE_POS, and what a line operator needs (issue 27, exdd_scoring/answer.py):
VERDICT, CONFIDENCE, AREA, BOX, NEAREST_SOURCE, NEAREST_CLASS. Request parameters: ``threshold`` and ``min_area``
(pixels) override the configured ones.

The banks are loaded once per instance, from ``banks/`` beside this file, and verified against
``features.json`` (the fingerprint of the exported extractor): banks made with other features
fail the load with a message naming the mismatch. KIND_GPU instances hold the banks on their
GPU with CuPy and take GPU inputs zero-copy via DLPack; KIND_CPU instances use NumPy.
Dynamic batching: all requests of one ``execute`` are scored in one pass and split again
(``exdd_scoring.batching``); a malformed request gets its own error response and the others are
answered normally. The anomaly map is upsampled and smoothed only when a request of the batch asks
for ANOMALY_MAP, or for the answer's region (AREA, BOX, VERDICT, IS_DEFECT with a minimum area) of banks with a
pixel threshold (a request for SCORE alone is answered without it; through the ensemble, which names every output,
banks with a pixel threshold always measure the region, and ANOMALY_MAP is returned unless anomaly_map is false).
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

# the scoring package copied into this model directory: only the modules imported here (and theirs)
from exdd_scoring.ann import searchers_from_manifest  # noqa: E402
from exdd_scoring.answer import OUTPUTS as LINE_OUTPUTS  # noqa: E402
from exdd_scoring.answer import answer, check_min_area, parse_min_area  # noqa: E402
from exdd_scoring.bank import BankError, load_banks  # noqa: E402
from exdd_scoring.batching import Parsed, run_batched  # noqa: E402
from exdd_scoring.model_names import DEFAULT_LABEL, MAP_PARAMETER, SCORER_MODEL  # noqa: E402
from exdd_scoring.scorer import Scorer  # noqa: E402
from exdd_scoring.scores import MODES  # noqa: E402
from exdd_scoring.spec import FeatureSpec  # noqa: E402
from exdd_scoring.triton_config import config_parameter  # noqa: E402
from exdd_scoring.verdict import VERDICTS  # noqa: E402

MAP = "ANOMALY_MAP"
# the outputs the largest region of the map decides (issue 27)
REGION_OUTPUTS = (LINE_OUTPUTS["area"], LINE_OUTPUTS["box"], LINE_OUTPUTS["verdict"], "IS_DEFECT")


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

SCORE_BUCKET_FACTORS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0)  # x the served threshold
LOG_SCORE_BUCKETS = tuple(10.0 ** (e / 2.0) for e in range(-6, 7))  # without a threshold


def score_buckets(threshold):
    """Histogram bucket bounds: around the threshold when there is one, else log-spaced 1e-3 .. 1e3."""
    if threshold is None or not threshold > 0:
        return list(LOG_SCORE_BUCKETS)
    return [float(threshold) * f for f in SCORE_BUCKET_FACTORS]


class DecisionMetrics:
    """exdd_images_scored_total, exdd_defects_flagged_total (counters), exdd_score (histogram), exdd_threshold
    (gauge)."""

    def __init__(self, version, mode, threshold, model=SCORER_MODEL, product=DEFAULT_LABEL):
        fam = pb_utils.MetricFamily
        labels = {"model": str(model), "product": str(product), "version": str(version), "mode": str(mode)}
        self.families = [
            fam(name="exdd_images_scored_total", description="Images scored by exdd_scorer", kind=fam.COUNTER),
            fam(name="exdd_defects_flagged_total", description="Images answered IS_DEFECT=true", kind=fam.COUNTER),
            fam(name="exdd_score", description="Image scores of the served mode", kind=fam.HISTOGRAM),
            fam(name="exdd_threshold", description="Served decision threshold (NaN: none)", kind=fam.GAUGE),
            fam(
                name="exdd_verdicts_total",
                description="Images answered per VERDICT (ok, review, defect)",
                kind=fam.COUNTER,
            ),
        ]
        self.scored = self.families[0].Metric(labels=labels)
        self.flagged = self.families[1].Metric(labels=labels)
        self.score = self.families[2].Metric(labels=labels, buckets=score_buckets(threshold))
        self.threshold = self.families[3].Metric(labels=labels)
        self.threshold.set(float("nan") if threshold is None else float(threshold))
        self.verdicts = {v: self.families[4].Metric(labels=dict(labels, verdict=v)) for v in VERDICTS}

    def record(self, scores, flags, verdicts=()):
        """Count one answered request's images."""
        self.scored.increment(float(len(scores)))
        self.flagged.increment(float(np.count_nonzero(flags)))
        for v in VERDICTS:
            n = sum(1 for x in verdicts if x == v)
            if n:
                self.verdicts[v].increment(float(n))
        for v in np.asarray(scores, dtype=np.float64).reshape(-1):
            if math.isfinite(v):
                self.score.observe(float(v))

    def close(self):
        """Metrics before their families (the backend requires that order)."""
        self.scored = self.flagged = self.score = self.threshold = self.verdicts = None
        self.families = None


def is_warmup(feats, xp):
    """Whether a request is the model_warmup sample (zero_data: every feature exactly 0), which no image yields:
    the extractor's features of any picture, a black one included, are not all zero."""
    return not bool(xp.any(feats))


def make_metrics(version, mode, threshold, model, product):
    """DecisionMetrics, or None (scoring goes on) when this backend has no metrics API."""
    try:
        return DecisionMetrics(version, mode, threshold, model, product)
    except Exception as e:  # metrics must never stop the scorer
        try:
            pb_utils.Logger.log_warn(f"{model}: custom metrics disabled ({e})")
        except Exception:
            pass
        return None


class TritonPythonModel:
    """The ExDD scorer."""

    def initialize(self, args):
        """Load and verify the banks on this instance's device."""
        config = json.loads(args["model_config"])
        self.name = args.get("model_name", SCORER_MODEL)  # exdd_scorer, or exdd_<product>_scorer
        version_dir = os.path.join(args["model_repository"], str(args["model_version"]))
        features_path = os.path.join(version_dir, "features.json")
        expected = None  # without features.json (banks copied into the committed template) exdd_features checks
        if os.path.exists(features_path):
            try:
                with open(features_path) as f:
                    expected = FeatureSpec.from_json(f.read(), features_path)
            except (OSError, ValueError) as e:
                raise RuntimeError(f"{self.name}: cannot read {features_path}: {e}") from None
        try:
            banks = load_banks(os.path.join(version_dir, "banks"), expected_features=expected)
        except BankError as e:
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
            searchers = searchers_from_manifest(os.path.join(version_dir, "banks"), banks.manifest, xp)
        except BankError as e:
            raise RuntimeError(f"{self.name}: refusing to load: {e}") from None
        self.scorer = Scorer(banks, xp=xp, sigma=sigma, searchers=searchers)
        self.mode = config_parameter(config, "mode", self.scorer.default_mode)
        if self.mode not in MODES:
            raise RuntimeError(f"{self.name}: config parameter mode {self.mode!r} is not one of {MODES}")
        thr = config_parameter(config, "threshold", "none")
        if thr == "none":
            thr = self.scorer.thresholds.get(self.mode)
        self.threshold = None if thr is None else parse_threshold(thr, "config parameter")
        self.product = config_parameter(config, "product", DEFAULT_LABEL)
        self.line = banks.manifest.line  # issue 27 (None: banks before it)
        default_area = 0 if self.line is None else self.line.min_area
        try:
            self.min_area = parse_min_area(config_parameter(config, "min_area", str(default_area)), "config parameter")
            check_min_area(self.line, self.mode, self.min_area, "config parameter")
        except ValueError as e:
            raise RuntimeError(f"{self.name}: {e}") from None
        self.has_regions = self.line is not None and self.mode in self.line.pixel_threshold
        self.metrics = make_metrics(args["model_version"], self.mode, self.threshold, self.name, self.product)

    def _record_metrics(self, score, ans, feats):
        """Decision metrics of one answered request; Triton's warm-up sample is answered but not counted."""
        if self.metrics is not None and not is_warmup(feats, self.xp):
            try:
                self.metrics.record(score, ans.is_defect, ans.verdict)
            except Exception:
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

    @staticmethod
    def _params(request):
        """The request's parameters (a dict)."""
        raw = request.parameters() if hasattr(request, "parameters") else "{}"
        params = json.loads(raw) if raw else {}
        return params if isinstance(params, dict) else {}

    def _threshold(self, params):
        """The request parameter 'threshold' if given, else the configured one (may be None)."""
        if "threshold" in params:
            return parse_threshold(params["threshold"], "request parameter")
        return self.threshold

    def _min_area(self, params):
        """The request parameter 'min_area' if given (checked against the banks), else the configured one."""
        if "min_area" not in params:
            return self.min_area
        area = parse_min_area(params["min_area"], "request parameter")
        check_min_area(self.line, self.mode, area, "request parameter")
        return area

    def _wants_region(self, request, min_area):
        """Whether the answer needs the map's largest region: banks with a pixel threshold and a request naming
        AREA, BOX, VERDICT or IS_DEFECT (naming none asks for all; through the ensemble every output is named), or
        a minimum area to apply."""
        if min_area > 0:
            return True
        names = request.requested_output_names() if hasattr(request, "requested_output_names") else None
        return self.has_regions and (not names or any(n in names for n in REGION_OUTPUTS))

    def _host(self, arr):
        """A NumPy copy of an xp array."""
        return self.cupy.asnumpy(arr) if self.gpu else np.asarray(arr)

    @staticmethod
    def _wants_map(request, params):
        """Whether the request wants ANOMALY_MAP: it names it among its outputs (naming none asks for all) and does
        not set the request parameter anomaly_map false. Through the ensemble every output is named (Triton asks a
        step for all its mapped outputs), so there the client's parameter decides (exdd client sends it)."""
        flag = params.get(MAP_PARAMETER, True)
        if not isinstance(flag, bool):
            raise ValueError(f"request parameter {MAP_PARAMETER!r} must be true or false, got {str(flag)[:40]!r}")
        names = request.requested_output_names() if hasattr(request, "requested_output_names") else None
        return flag and (not names or MAP in names)

    def _parse(self, request):
        """The request's features, and (its threshold, whether it wants the map, its minimum area, whether its
        answer needs the map's region)."""
        params = self._params(request)
        area = self._min_area(params)
        return Parsed(
            self._features(request),
            (self._threshold(params), self._wants_map(request, params), area, self._wants_region(request, area)),
        )

    def _run(self, feats, parsed):
        """The served mode's ScoreBatch on the host; the map only when a request of the batch asks for it or for
        its region."""
        map_modes = (self.mode,) if any(p.context[1] or p.context[3] for p in parsed) else ()
        return self.scorer.score(feats, map_modes=map_modes, modes=(self.mode,)).to_host(self._host)

    def _response(self, sb, parsed):
        """The inference response of one request from its share of the batch."""
        threshold, wants_map, min_area, _ = parsed.context
        col = lambda a: np.ascontiguousarray(a, dtype=np.float32).reshape(-1, 1)  # noqa: E731
        text = lambda v: np.array([[x.encode()] for x in v], dtype=np.object_).reshape(-1, 1)  # noqa: E731
        score = sb.scores[self.mode]
        n = score.shape[0]
        area = sb.areas.get(self.mode, np.zeros(n, dtype=np.int32))  # no region measured: area 0
        box = sb.boxes.get(self.mode, np.zeros((n, 4), dtype=np.int32))
        ans = answer(
            score, area, box, sb.nearest_rows[self.mode], self.mode, threshold, self.line, self.scorer.sources, min_area
        )
        o = LINE_OUTPUTS
        tensors = [
            pb_utils.Tensor("SCORE", col(score)),
            pb_utils.Tensor("IS_DEFECT", np.ascontiguousarray(ans.is_defect, dtype=bool).reshape(-1, 1)),
            pb_utils.Tensor("SCORE_NEG", col(sb.s_neg)),
            pb_utils.Tensor("SCORE_POS", col(sb.s_pos)),
            pb_utils.Tensor(o["verdict"], text(ans.verdict)),
            pb_utils.Tensor(o["confidence"], col(ans.confidence)),
            pb_utils.Tensor(o["area"], np.ascontiguousarray(ans.area, dtype=np.int32).reshape(-1, 1)),
            pb_utils.Tensor(o["box"], np.ascontiguousarray(ans.box, dtype=np.int32).reshape(-1, 4)),
            pb_utils.Tensor(o["nearest_source"], text(ans.nearest_source)),
            pb_utils.Tensor(o["nearest_class"], text(ans.nearest_class)),
        ]
        if wants_map:
            tensors.append(pb_utils.Tensor(MAP, np.ascontiguousarray(sb.maps[self.mode], dtype=np.float32)))
        self._record_metrics(score, ans, parsed.array)
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests):
        """Score every valid request in one pass; errors stay with their own request."""
        return run_batched(
            requests,
            self._parse,
            self._run,
            self._response,
            lambda e: pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {e}")),
            self.xp.concatenate,
        )

    def finalize(self):
        """Release the banks and this version's metrics."""
        self.scorer = None
        if getattr(self, "metrics", None) is not None:
            self.metrics.close()
            self.metrics = None
