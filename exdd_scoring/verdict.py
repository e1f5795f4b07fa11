"""What the line does with each image (issue 27): a verdict of three, a calibrated confidence, the area rule.

- verdict: ``ok`` (score below T1: pass the part), ``review`` (T1 <= score < T2: a person looks), ``defect``
  (score >= T2: reject the part). T1 and T2 are calibrated on the build's hold-out (offline/calibrate.py:
  T2 at 1 % false alarms on the held-out normals, T1 at 1 % misses on the held-out defects) and the band always
  contains the decision threshold T in use (a per-request threshold widens it), so IS_DEFECT (score >= T) is
  never ``ok`` and a ``defect`` is always IS_DEFECT.
- minimum area (pixels, 0 = off): an image is a defect only when its largest region above the pixel threshold
  has at least that area; an image failing the area rule is ``ok`` (its evidence is too small to matter by the
  line's own rule) and not IS_DEFECT.
- confidence: P(defect) from the image score by a logistic model of asinh(score) fitted on the hold-out (Platt
  scaling; asinh keeps every mode's scale, log-like for the unbounded ones, signed for the head's log-odds).
  Without a fit (no held-out defect, or a bank built before issue 27) it is NaN: unknown, never a made-up number.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

VERDICTS: Tuple[str, ...] = ("ok", "review", "defect")  # the codes 0, 1, 2 index this


def band(
    ok_below: Optional[float], defect_above: Optional[float], threshold: Optional[float]
) -> Tuple[Optional[float], Optional[float]]:
    """The review band (T1, T2) in use with threshold T: it always contains T; without a calibrated band, [T, T]
    (two verdicts, ok / defect, as IS_DEFECT). (None, None) without any threshold."""
    if threshold is None:
        return ok_below, defect_above
    t1 = threshold if ok_below is None else min(float(ok_below), float(threshold))
    t2 = threshold if defect_above is None else max(float(defect_above), float(threshold))
    return t1, t2


def area_ok(areas: Any, min_area: int, xp: Any) -> Any:
    """(B,) bool: the largest region has at least min_area pixels (always True when min_area is 0)."""
    areas = xp.asarray(areas)
    return areas >= int(min_area) if int(min_area) > 0 else xp.ones(areas.shape, dtype=bool)


def verdict_codes(scores: Any, t1: Optional[float], t2: Optional[float], big_enough: Any, xp: Any) -> Any:
    """(B,) int8 index into VERDICTS: ok below t1, defect at or above t2, review between; ok where the area rule
    fails. Without a band (uncalibrated banks) every image is 'review'."""
    scores = xp.asarray(scores)
    if t1 is None or t2 is None:
        codes = xp.ones(scores.shape, dtype=xp.int8)
    else:
        codes = (scores >= t1).astype(xp.int8) + (scores >= t2).astype(xp.int8)
    return xp.where(xp.asarray(big_enough), codes, xp.zeros_like(codes))


def verdict_names(codes: Sequence[int]) -> Tuple[str, ...]:
    """The verdict names of codes."""
    return tuple(VERDICTS[int(c)] for c in codes)


def confidence(scores: Any, params: Optional[Dict[str, Any]], xp: Any) -> Any:
    """(B,) float32 calibrated P(defect) of image scores; NaN without a fitted model (params None)."""
    scores = xp.asarray(scores, dtype=xp.float64)
    if not params:
        return xp.full(scores.shape, math.nan, dtype=xp.float32)
    z = (xp.arcsinh(scores) - float(params["mean"])) / float(params["scale"]) * float(params["coef"]) + float(
        params["intercept"]
    )
    return (1.0 / (1.0 + xp.exp(-xp.clip(z, -60.0, 60.0)))).astype(xp.float32)
