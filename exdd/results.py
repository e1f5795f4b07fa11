"""The evaluation results schema, defined once: written by ``exdd offline evaluate``, ``exdd client
evaluate`` and the demo, read by ``exdd report``.

A results JSON is an object with ``version`` (RESULTS_VERSION), the metrics of every scored mode,
the served/default mode, the thresholds, one row per scored image and one per unreadable file.
Files written before the version field existed (version absent) are read as version 1.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from exdd.fileio import atomic_write, json_safe
from exdd_scoring.answer import FIELDS

RESULTS_VERSION = 1
_KNOWN = (
    "version",
    "source",
    "default_mode",
    "metrics",
    "thresholds",
    "images",
    "errors",
    "dataset",
    "split",
    "banks",
    "weights",
    "weights_note",
    "seconds",
)
# issue 27: per image (ImageResult), absent in older files; results-level 'review_band' {"ok_below", "defect_above"}
# and 'roi' (the bank's roi.png) travel in extra
LINE_FIELDS = FIELDS


class ResultsError(ValueError):
    """A results JSON that does not follow the schema; the message names the file and the field."""


@dataclass(frozen=True)
class ImageResult:
    """One scored image: its label (1 defect, 0 normal, -1 unknown), scores per mode, per-bank scores."""

    path: str
    label: int
    scores: Dict[str, float]
    kind: str = ""
    s_neg: Optional[float] = None
    s_pos: Optional[float] = None
    heatmap: Optional[str] = None  # an overlay PNG of the anomaly map, when one was written
    error: Optional[str] = None  # a row that could not be scored (scores empty)
    served_score: Optional[float] = None  # the server's score of the default mode (the demo's comparison)
    # issue 27, of the default mode (exdd_scoring/answer.py; None: not given): ok | review | defect, calibrated
    # P(defect), the largest region's area (model-input pixels) and box (the image's pixels, [] without a region),
    # the nearest known defect's training image (relative to the dataset root) and class
    verdict: Optional[str] = None
    confidence: Optional[float] = None
    area: Optional[int] = None
    box: Optional[List[int]] = None
    nearest_source: Optional[str] = None
    nearest_class: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        out = {
            "path": self.path,
            "label": self.label,
            "kind": self.kind,
            "scores": dict(self.scores),
            "s_neg": self.s_neg,
            "s_pos": self.s_pos,
        }
        for k in LINE_FIELDS:
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        if self.heatmap is not None:
            out["heatmap"] = self.heatmap
        if self.error is not None:
            out["error"] = self.error
        if self.served_score is not None:
            out["served_score"] = self.served_score
        return out


@dataclass(frozen=True)
class ErrorRow:
    """A file that could not be scored, and why."""

    path: str
    error: str


@dataclass
class EvaluationResults:
    """Metrics per mode, the scored images and the unreadable files of one evaluation."""

    metrics: Dict[str, Dict[str, Any]]
    default_mode: str
    images: List[ImageResult]
    errors: List[ErrorRow] = field(default_factory=list)
    thresholds: Dict[str, float] = field(default_factory=dict)
    source: str = "offline"  # "offline", "server URL[,URL]" or "demo"
    dataset: Optional[str] = None
    split: Optional[str] = None
    banks: Optional[str] = None
    weights: Optional[str] = None
    weights_note: str = ""
    seconds: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)  # further sections (served, offline_difference, ...)
    version: int = RESULTS_VERSION

    @property
    def modes(self) -> List[str]:
        return list(self.metrics)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form (NaN/inf metrics become null)."""
        out: Dict[str, Any] = {
            "version": self.version,
            "source": self.source,
            "default_mode": self.default_mode,
            "metrics": self.metrics,
            "thresholds": self.thresholds,
            "images": [im.to_dict() for im in self.images],
            "errors": [asdict(e) for e in self.errors],
        }
        for k in ("dataset", "split", "banks", "weights", "seconds"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        if self.weights_note:
            out["weights_note"] = self.weights_note
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return json_safe(out)

    def save(self, path: str) -> str:
        """Write the JSON atomically (temporary file + rename); returns path."""
        return atomic_write(path, json.dumps(self.to_dict(), indent=1, allow_nan=False))

    @classmethod
    def from_dict(cls, data: Any, where: str = "results") -> "EvaluationResults":
        """Validate and type a results object; ResultsError names where and what is wrong."""
        if not isinstance(data, Mapping):
            raise ResultsError(f"{where}: expected a JSON object with 'metrics' and 'images'")
        version = data.get("version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ResultsError(f"{where}: version {version!r} is not a results schema version")
        if version > RESULTS_VERSION:
            raise ResultsError(
                f"{where}: results schema version {version} is newer than this exdd reads "
                f"({RESULTS_VERSION}); upgrade exdd"
            )
        metrics = data.get("metrics")
        if not isinstance(metrics, Mapping) or not all(isinstance(v, Mapping) for v in metrics.values()):
            raise ResultsError(f"{where}: 'metrics' must be an object of mode -> metrics")
        images_raw = data.get("images")
        if not isinstance(images_raw, list):
            raise ResultsError(f"{where}: 'images' must be a list")
        images = []
        for i, im in enumerate(images_raw):
            if (
                not isinstance(im, Mapping)
                or not isinstance(im.get("path"), str)
                or not isinstance(im.get("scores", {} if im.get("error") else None), Mapping)
            ):
                raise ResultsError(f"{where}: images[{i}] needs 'path' (text) and 'scores' (an object)")
            try:
                scores = {str(m): _float(v) for m, v in (im.get("scores") or {}).items()}
                label = int(im.get("label", -1))
                s_neg, s_pos = _opt_float(im.get("s_neg")), _opt_float(im.get("s_pos"))
                served = _opt_float(im.get("served_score"))
                line = _line_fields(im)
            except (TypeError, ValueError):
                raise ResultsError(
                    f"{where}: images[{i}] ({im['path']}): scores and label must be numbers, and "
                    "verdict, confidence, area, box, nearest_source, nearest_class of their "
                    "kinds"
                ) from None
            images.append(
                ImageResult(
                    im["path"],
                    label,
                    scores,
                    str(im.get("kind") or ""),
                    s_neg,
                    s_pos,
                    im.get("heatmap"),
                    im.get("error"),
                    served,
                    **line,
                )
            )
        errors = []
        for i, e in enumerate(data.get("errors") or []):
            if not isinstance(e, Mapping) or "path" not in e:
                raise ResultsError(f"{where}: errors[{i}] needs 'path' and 'error'")
            errors.append(ErrorRow(str(e["path"]), str(e.get("error", ""))))
        thresholds = data.get("thresholds") or {}
        if not isinstance(thresholds, Mapping):
            raise ResultsError(f"{where}: 'thresholds' must be an object of mode -> number")
        default_mode = data.get("default_mode") or (next(iter(metrics), "") if metrics else "")
        return cls(
            metrics={str(k): dict(v) for k, v in metrics.items()},
            default_mode=str(default_mode),
            images=images,
            errors=errors,
            thresholds={str(k): float(v) for k, v in thresholds.items() if v is not None},
            source=str(data.get("source", "offline")),
            dataset=data.get("dataset"),
            split=data.get("split"),
            banks=data.get("banks"),
            weights=data.get("weights"),
            weights_note=str(data.get("weights_note") or ""),
            seconds=data.get("seconds"),
            extra={k: v for k, v in data.items() if k not in _KNOWN},
            version=RESULTS_VERSION,
        )

    @classmethod
    def load(cls, path: str) -> "EvaluationResults":
        """Read and validate a results JSON file; ResultsError names the file."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ResultsError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ResultsError(f"{path}: not a readable results JSON ({e})") from None
        return cls.from_dict(data, path)


def _line_fields(im: Mapping[str, Any]) -> Dict[str, Any]:
    """The issue-27 fields of an image row (absent ones None); ValueError when one is of the wrong kind."""
    out: Dict[str, Any] = {k: None for k in LINE_FIELDS}
    if im.get("verdict") is not None:
        out["verdict"] = str(im["verdict"])
    out["confidence"] = _opt_float(im.get("confidence"))
    if im.get("area") is not None:
        out["area"] = int(im["area"])
    if im.get("box") is not None:
        box = [int(v) for v in im["box"]]
        if len(box) not in (0, 4):
            raise ValueError("box")
        out["box"] = box
    for k in ("nearest_source", "nearest_class"):
        if im.get(k) is not None:
            out[k] = str(im[k])
    return out


def _float(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _opt_float(v: Any) -> Optional[float]:
    return None if v is None else float(v)
