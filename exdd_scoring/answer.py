"""The answer a line operator gets for each image (issue 27), from one scored batch: the typed contract of the
new per-image fields, computed once here for every path (the served scorer, offline evaluate, the stream).

Per image: ``verdict`` ("ok" | "review" | "defect"), ``confidence`` (calibrated P(defect), NaN when not
calibrated), ``area`` and ``box`` (the largest region of the served map above the pixel threshold, inside the ROI;
box [x0, y0, x1, y1] in the model-input frame, ends exclusive, [0, 0, 0, 0] without one), ``nearest_source`` and
``nearest_class`` (the training image, relative to the dataset root, of the positive-bank patch nearest to the
image's peak defect patch, and its class; "" when unknown). ``is_defect`` is score >= threshold with the minimum
area rule. Results-level: ``review_band`` {"ok_below": T1, "defect_above": T2} (verdict.band: contains the
threshold in use).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .line_rules import LineRules
from .nearest import DefectSources
from .verdict import area_ok, band, confidence, verdict_codes, verdict_names

# The per-image fields beyond the score, in the order the result rows and the report list them, and the Triton
# output of each (the scorer's and the ensemble's config.pbtxt declare them; clients ask for them by these names).
FIELDS = ("verdict", "confidence", "area", "box", "nearest_source", "nearest_class")
OUTPUTS = {
    "verdict": "VERDICT",
    "confidence": "CONFIDENCE",
    "area": "AREA",
    "box": "BOX",
    "nearest_source": "NEAREST_SOURCE",
    "nearest_class": "NEAREST_CLASS",
}


def parse_min_area(value: Any, where: str) -> int:
    """A minimum defect area: an integer >= 0 (pixels) from a JSON number or numeric string; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{where} 'min_area' must be an integer >= 0 (pixels), got {value!r}")
    try:
        out = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ValueError(f"{where} 'min_area' must be an integer >= 0 (pixels), got {str(value)[:40]!r}") from None
    if isinstance(value, float) or out < 0:
        raise ValueError(f"{where} 'min_area' must be an integer >= 0 (pixels), got {value!r}")
    return out


def review_band(
    rules: Optional[LineRules], mode: str, threshold: Optional[float]
) -> Tuple[Optional[float], Optional[float]]:
    """(T1, T2) served for mode with threshold: the calibrated band widened to contain the threshold; [T, T] for
    banks without one (ok / defect only)."""
    rb = rules.review.get(mode) if rules is not None else None
    return band(None if rb is None else rb.ok_below, None if rb is None else rb.defect_above, threshold)


def check_min_area(rules: Optional[LineRules], mode: str, min_area: int, where: str) -> None:
    """ValueError when a minimum area is asked of banks without a pixel threshold for mode (no regions to measure)."""
    if min_area > 0 and (rules is None or mode not in rules.pixel_threshold):
        raise ValueError(
            f"{where} 'min_area' {min_area} needs a calibrated pixel threshold for mode {mode!r}: these "
            "banks have none (built before issue 27 or without held-out normals); rebuild them"
        )


@dataclass(frozen=True)
class Answer:
    """The per-image fields of B images (host arrays)."""

    is_defect: np.ndarray  # (B,) bool
    verdict: Tuple[str, ...]  # (B,) "ok" | "review" | "defect"
    confidence: np.ndarray  # (B,) float32, NaN when not calibrated
    area: np.ndarray  # (B,) int32
    box: np.ndarray  # (B, 4) int32
    nearest_source: Tuple[str, ...]
    nearest_class: Tuple[str, ...]

    def row(self, i: int) -> Dict[str, Any]:
        """Image i's fields as JSON values (confidence None when NaN, box [] without a region)."""
        c = float(self.confidence[i])
        return {
            "verdict": self.verdict[i],
            "confidence": None if c != c else c,
            "area": int(self.area[i]),
            "box": [int(v) for v in self.box[i]] if self.area[i] > 0 else [],
            "nearest_source": self.nearest_source[i],
            "nearest_class": self.nearest_class[i],
        }


def answer(
    scores: Any,
    areas: Any,
    boxes: Any,
    nearest_rows: Any,
    mode: str,
    threshold: Optional[float],
    rules: Optional[LineRules],
    sources: Optional[DefectSources],
    min_area: int = 0,
) -> Answer:
    """The answer of B images of one mode: scores (B,), the regions (areas (B,), boxes (B, 4)) and nearest positive
    rows (B,) the Scorer gave, with the served threshold (None: IS_DEFECT false), the manifest's line rules and the
    bank's defect sources (either None for older banks)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    areas = np.asarray(areas, dtype=np.int32).reshape(-1)
    big = area_ok(areas, min_area, np)
    defect = (scores >= threshold) & big if threshold is not None else np.zeros(scores.shape, dtype=bool)
    t1, t2 = review_band(rules, mode, threshold)
    codes = verdict_codes(scores, t1, t2, big, np)
    conf = confidence(
        scores, None if rules is None or mode not in rules.confidence else rules.confidence[mode].to_dict(), np
    )
    if sources is not None:
        src, cls = sources.lookup(nearest_rows)
    else:
        src, cls = [""] * scores.size, [""] * scores.size
    return Answer(
        defect,
        verdict_names(codes),
        np.asarray(conf, dtype=np.float32),
        areas,
        np.asarray(boxes, dtype=np.int32).reshape(-1, 4),
        tuple(src),
        tuple(cls),
    )
