"""One connection to a Triton server serving the ``exdd`` ensemble (gRPC or HTTP).

Everything the client needs from the server goes through here: the model's input size and
calibration (read from its config, never hard-coded) and inference with retries.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from exdd_scoring.answer import OUTPUTS as LINE_OUTPUT_OF
from exdd_scoring.model_names import ENSEMBLE_MODEL, MAP_PARAMETER, SCORER_MODEL
from exdd_scoring.spec import FeatureSpec, SpecError

MODEL = ENSEMBLE_MODEL  # the default product's models (a product's: exdd_scoring.model_names.ProductModels)
SCORER = SCORER_MODEL
OUTPUTS = ("SCORE", "IS_DEFECT", "SCORE_NEG", "SCORE_POS")
MAP = "ANOMALY_MAP"
# issue 27: what a line operator needs, asked for when the served model has them (repositories since issue 27)
LINE_OUTPUTS = tuple(LINE_OUTPUT_OF.values())
IMAGE_HW = "IMAGE_HW"  # each picture's own (H, W), answered for encoded inputs (repositories since issue 21)
# A batch is a uint8 (B, H, W, 3) array (input IMAGE: the model-input size, or any size since issue 21, resized by
# the server's exdd_preprocess) or a sequence of encoded files' bytes (input IMAGE_BYTES, decoded by the server).
Batch = Union[np.ndarray, Sequence[bytes]]


class ServerUnavailable(RuntimeError):
    """The server could not be reached (after retries)."""


class RequestRejected(RuntimeError):
    """The server answered the request with an error: bad_input when it said the input is invalid (HTTP 400, gRPC
    INVALID_ARGUMENT: the picture is bad, a rerun gets the same answer), else a server-side failure (a crashed
    backend, a model not ready: transient, retried by ``client score --retry-errors``)."""

    def __init__(self, message: str, bad_input: bool = False):
        super().__init__(message)
        self.bad_input = bad_input


def _is_bad_input(e: Exception) -> bool:
    """Whether a tritonclient error says the request's input is invalid (HTTP 400, gRPC INVALID_ARGUMENT)."""
    status = str(getattr(e, "status", lambda: None)() or "")
    return status in ("400", "StatusCode.INVALID_ARGUMENT")


@dataclass(frozen=True)
class ModelInfo:
    """What the client needs to know about the served model."""

    input_hw: tuple
    max_batch: int
    mode: str
    threshold: Optional[float]
    features: Optional[FeatureSpec] = None  # the served extractor's fingerprint (repositories since issue 12)
    outputs: Tuple[str, ...] = ()  # the ensemble's outputs (the line fields only where it has them)
    review_band: Optional[Dict[str, float]] = None  # {"ok_below": T1, "defect_above": T2} served (issue 27)
    min_area: int = 0  # the served minimum defect area (pixels, 0: off)


def line_fields(out: Dict[str, np.ndarray], j: int) -> Dict[str, Any]:
    """Image j's issue-27 fields of an answer as row values (those the answer has): verdict, confidence (None when
    not calibrated), area, box ([] without a region), nearest_source, nearest_class."""

    def text(name: str) -> str:
        v = out[name][j].reshape(-1)[0]
        return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)

    o = LINE_OUTPUT_OF
    row: Dict[str, Any] = {}
    if o["verdict"] in out:
        row["verdict"] = text(o["verdict"])
    if o["confidence"] in out:
        c = float(out[o["confidence"]][j].reshape(-1)[0])
        row["confidence"] = c if math.isfinite(c) else None
    if o["area"] in out:
        row["area"] = int(out[o["area"]][j].reshape(-1)[0])
    if o["box"] in out:
        box = [int(v) for v in out[o["box"]][j].reshape(-1)]
        row["box"] = box if row.get("area", 1) > 0 else []
    for key in ("nearest_source", "nearest_class"):
        if o[key] in out:
            row[key] = text(o[key])
    return row


def served_threshold(text: Optional[str], where: str = "server", scorer: str = SCORER) -> Optional[float]:
    """The scorer's config parameter 'threshold': None when absent, empty or 'none' (an uncalibrated
    repository), else a finite float; RequestRejected names any other value."""
    if text is None or str(text).strip().lower() in ("", "none", "null"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise RequestRejected(
            f"{where}: model {scorer!r} has config parameter threshold {str(text)[:40]!r}, "
            "not a number (rebuild the repository with `exdd export repository`)"
        )
    return value


def normalise_url(url: str, protocol: str) -> str:
    """host:port without scheme (tritonclient's form), IPv6 hosts bracketed; default ports per protocol."""
    u = url.split("://", 1)[-1].rstrip("/")
    port = ":8001" if protocol == "grpc" else ":8000"
    if u.startswith("["):  # [::1] or [::1]:8001
        return u if "]:" in u else u + port
    if u.count(":") > 1:  # a bare IPv6 address: ::1 -> [::1]:8001
        return f"[{u}]{port}"
    return u if ":" in u else u + port


def _is_unavailable(e: Exception) -> bool:
    text = str(e).lower()
    return any(
        s in text
        for s in (
            "unavailable",
            "connection refused",
            "failed to connect",
            "connection reset",
            "broken pipe",
            "timed out",
            "deadline",
            "socket closed",
            "connect call failed",
            "server disconnected",
            "[errno",
            "name or service",
            "eof",
            "no route",
        )
    )


class Connection:
    """A tritonclient client bound to one server URL (one per worker thread)."""

    def __init__(
        self, url: str, protocol: str = "grpc", model: str = MODEL, timeout_s: float = 60.0, scorer: str = SCORER
    ):
        self.protocol = protocol
        self.url = normalise_url(url, protocol)
        self.model = model  # the product's ensemble (exdd, exdd_NAME)
        self.scorer = scorer  # its scorer, whose config holds mode, threshold and features
        self.timeout_s = timeout_s
        if protocol == "grpc":
            import tritonclient.grpc as tc
        elif protocol == "http":
            import tritonclient.http as tc
        else:
            raise ValueError(f"protocol {protocol!r}: grpc or http")
        self._tc = tc
        timeouts = {"connection_timeout": timeout_s, "network_timeout": timeout_s} if protocol == "http" else {}
        self._client = tc.InferenceServerClient(self.url, **timeouts)

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # closing a dead connection
            pass

    def _config(self, model: str) -> Dict:
        if self.protocol == "grpc":
            return self._client.get_model_config(model, as_json=True)["config"]
        return self._client.get_model_config(model)

    def _served_hint(self) -> str:
        """'; ready models here: ...' from the server's repository index ('' when it cannot be read)."""
        try:
            index = self._client.get_model_repository_index(**({"as_json": True} if self.protocol == "grpc" else {}))
            rows = index.get("models", []) if isinstance(index, dict) else index
            ready = sorted(r["name"] for r in rows if str(r.get("state", "")).upper() == "READY")
        except Exception:  # only a hint
            return ""
        return f"; ready models here: {', '.join(ready) or 'none'}"

    def info(self) -> ModelInfo:
        """The input size, max batch, mode and calibrated threshold of the served model."""
        from tritonclient.utils import InferenceServerException

        try:
            cfg = self._config(self.model)
            scorer = self._config(self.scorer)
        except InferenceServerException as e:
            if _is_unavailable(e):
                raise ServerUnavailable(f"{self.url}: server not reachable ({e})") from None
            raise RequestRejected(
                f"{self.url}: model {self.model!r} not available ({e}){self._served_hint()}"
            ) from None
        except Exception as e:  # socket-level failures of both clients
            raise ServerUnavailable(f"{self.url}: server not reachable ({e})") from None
        dims = [int(v) for v in next(i for i in cfg["input"] if i["name"] == "IMAGE")["dims"]]
        params = {k: v.get("string_value") for k, v in (scorer.get("parameters") or {}).items()}
        features = None
        if params.get("features"):
            try:
                features = FeatureSpec.from_json(params["features"], f"{self.url}: {self.scorer} parameter features")
            except SpecError as e:
                raise RequestRejected(str(e)) from None
        fixed = None if -1 in dims[:2] else (dims[0], dims[1])  # -1: any size (the server resizes)
        if features is not None:
            hw = features.input_size
        elif fixed is not None:
            hw = fixed
        else:
            raise RequestRejected(
                f"{self.url}: model {self.model!r} takes any image size but {self.scorer!r} has no "
                "features parameter naming the model input (rebuild with `exdd export repository`)"
            )
        if fixed is not None and fixed != hw:
            raise RequestRejected(
                f"{self.url}: model {self.model!r} takes {fixed[0]}x{fixed[1]} images but its "
                f"features say {hw[0]}x{hw[1]} (inconsistent repository)"
            )
        band = None
        if params.get("review_band"):
            try:
                band = {k: float(v) for k, v in json.loads(params["review_band"]).items()}
            except (ValueError, TypeError, AttributeError):
                raise RequestRejected(
                    f"{self.url}: model {self.scorer!r} has config parameter review_band "
                    f"{params['review_band'][:60]!r}, not a JSON object of numbers"
                ) from None
        return ModelInfo(
            hw,
            int(cfg.get("max_batch_size", 1)),
            params.get("mode", "exdd"),
            served_threshold(params.get("threshold"), self.url, self.scorer),
            features,
            tuple(o["name"] for o in cfg.get("output", [])),
            band,
            int(params.get("min_area") or 0),
        )

    def infer(
        self,
        images: Batch,
        threshold: Optional[float] = None,
        with_map: bool = False,
        line: Sequence[str] = (),
        min_area: Optional[int] = None,
    ) -> Dict[str, np.ndarray]:
        """Outputs for a batch (a uint8 (B, H, W, 3) array, or encoded files' bytes: then IMAGE_HW too), and the line
        outputs named (ModelInfo.outputs & LINE_OUTPUTS: those the model has); min_area overrides the served minimum
        defect area; ServerUnavailable or RequestRejected on failure."""
        from tritonclient.utils import InferenceServerException

        tc = self._tc
        encoded = not isinstance(images, np.ndarray)
        if not isinstance(images, np.ndarray):
            blobs = np.empty((len(images), 1), dtype=object)
            blobs[:, 0] = [bytes(b) for b in images]
            inp = tc.InferInput("IMAGE_BYTES", list(blobs.shape), "BYTES")
            inp.set_data_from_numpy(blobs)
        else:
            inp = tc.InferInput("IMAGE", list(images.shape), "UINT8")
            inp.set_data_from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
        names = list(OUTPUTS) + ([MAP] if with_map else []) + ([IMAGE_HW] if encoded else []) + list(line)
        outs = [tc.InferRequestedOutput(n) for n in names]
        params: Dict[str, Any] = {} if with_map else {MAP_PARAMETER: False}  # the scorer then skips the map
        if threshold is not None:
            params["threshold"] = float(threshold)
        if min_area is not None:
            params["min_area"] = int(min_area)
        try:
            kw = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
            res = self._client.infer(self.model, [inp], outputs=outs, parameters=params or None, **kw)
        except InferenceServerException as e:
            if _is_unavailable(e):
                raise ServerUnavailable(f"{self.url}: {e}") from None
            raise RequestRejected(f"{self.url}: {e}", bad_input=_is_bad_input(e)) from None
        except Exception as e:  # socket-level failures
            raise ServerUnavailable(f"{self.url}: {type(e).__name__}: {e}") from None
        return {n: res.as_numpy(n) for n in names}

    def inference_count(self, model: str = SCORER) -> int:
        """Successful inferences the server has counted for a model (for load-spreading checks)."""
        if self.protocol == "grpc":
            st = self._client.get_inference_statistics(model, as_json=True)
        else:
            st = self._client.get_inference_statistics(model)
        return sum(int(m.get("inference_count", 0)) for m in st.get("model_stats", []))


def with_retries(fn, attempts: int, backoff_s: float, on_retry=None):
    """Call fn() retrying ServerUnavailable with exponential backoff; re-raises the last failure."""
    delay = backoff_s
    for i in range(attempts):
        try:
            return fn(i)
        except ServerUnavailable as e:
            if i == attempts - 1:
                raise
            if on_retry:
                on_retry(e, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
