"""Decision thresholds from scores of held-out training images (kept out of the banks)."""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from exdd.metrics import confusion, f1_max
from exdd_scoring.fusion import fit_fusion

RULES = ("f1", "fpr")


def threshold(scores: np.ndarray, labels: np.ndarray, rule: str, target_fpr: float) -> Dict[str, Any]:
    """The threshold (score >= t is a defect) by rule, and the rule actually applied.

    f1: best F1 on the held-out images (needs both classes, else falls back to fpr);
    fpr: the smallest threshold whose false-positive rate on held-out normals is <= target_fpr.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    normals = np.sort(scores[labels == 0])
    if rule == "f1" and (labels == 1).any() and (labels == 0).any():
        f1, t = f1_max(scores, labels)
        return {"value": float(t), "rule": "f1", "heldout_f1": float(f1)}
    if normals.size == 0:
        raise ValueError("cannot calibrate a threshold: the held-out set has no normal image")
    allowed = int(np.floor(target_fpr * normals.size))  # normals allowed at or above t
    t = (
        float(np.nextafter(normals[normals.size - 1 - allowed], np.inf))
        if allowed < normals.size
        else float(normals[0])
    )
    fpr = float((normals >= t).mean())
    return {"value": t, "rule": "fpr", "target_fpr": float(target_fpr), "heldout_fpr": fpr}


# Issue 25, rule 7: modes whose threshold is not calibrated on the cross-fitted defective training images: their
# scores are fitted at build time (the head on those very images; the fusion after the cross-fitted pass)
CROSSFIT_EXCLUDED = ("fusion", "head")


def crossfit_threshold(
    scores: np.ndarray, labels: np.ndarray, crossfit: Optional[np.ndarray], rule: str, target_fpr: float
) -> Dict[str, Any]:
    """``threshold`` with, for rule f1, the cross-fitted defective training images' scores (crossfit) beside the
    held-out ones (issue 25, rule 7: two builds then decide more test images alike and the test F1 rises; BENCHMARKS.md,
    "What a rebuild changes on the line"): F1's optimum with every defective image weighted n_held_defective /
    (n_held_defective + n_crossfit), so the held-out share of defects is kept. Without cross-fitted scores, held-out
    defects or held-out normals: ``threshold`` itself."""
    labels = np.asarray(labels).astype(int)
    n_def = int(labels.sum())
    if rule != "f1" or crossfit is None or crossfit.size == 0 or n_def == 0 or n_def == labels.size:
        return threshold(scores, labels, rule, target_fpr)
    held = np.asarray(scores, np.float64)
    s = np.r_[held, np.asarray(crossfit, np.float64)]
    y = np.r_[labels, np.ones(crossfit.size, int)]
    w = n_def / (n_def + crossfit.size)
    f1, t = f1_max(s, y, np.where(y == 1, w, 1.0))
    return {
        "value": t,
        "rule": "f1",
        "heldout_f1": confusion(held, labels, t)["f1"],
        "crossfit_defects": int(crossfit.size),
        "defect_weight": float(w),
        "calibration_f1": f1,
    }


# Issue 27: the review band's rates (documented in README, "Running a line").
REVIEW_FALSE_ALARMS = 0.01  # T2 (defect_above): at most 1 % of the held-out normals reach it
REVIEW_MISSES = 0.01  # T1 (ok_below): at most 1 % of the held-out defects fall below it


def review_band(
    scores: np.ndarray,
    labels: np.ndarray,
    threshold_value: Optional[float],
    false_alarms: float = REVIEW_FALSE_ALARMS,
    misses: float = REVIEW_MISSES,
) -> Dict[str, Any]:
    """The review band (T1, T2) of held-out scores: score >= T2 is a defect with at most `false_alarms` of the
    normals there, score < T1 passes with at most `misses` of the defects there, between is for a person.

    T2 needs held-out normals and T1 held-out defects; a missing side is the decision threshold (so the band is
    [T, T2] or [T1, T]). When the two classes are apart (T1 > T2) no image needs a person: both are the threshold
    (the midpoint without one). The band always contains the threshold (exdd_scoring.verdict.band)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    normals, defects = np.sort(scores[labels == 0]), np.sort(scores[labels == 1])
    out: Dict[str, Any] = {
        "false_alarms": float(false_alarms),
        "misses": float(misses),
        "heldout": {"normal": int(normals.size), "defective": int(defects.size)},
    }
    t2 = threshold(normals, np.zeros(normals.size, int), "fpr", false_alarms)["value"] if normals.size else None
    t1 = None
    if defects.size:
        allowed = int(np.floor(misses * defects.size))  # defects allowed below T1
        t1 = float(defects[allowed])
    if t1 is not None and t2 is not None and t1 > t2:
        mid = threshold_value if threshold_value is not None and t2 <= threshold_value <= t1 else (t1 + t2) / 2
        t1 = t2 = float(mid)
        out["apart"] = True
    t1 = threshold_value if t1 is None else t1
    t2 = threshold_value if t2 is None else t2
    if t1 is None or t2 is None:
        raise ValueError("cannot calibrate a review band: no held-out images and no threshold")
    if threshold_value is not None:
        t1, t2 = min(t1, threshold_value), max(t2, threshold_value)
    out.update(
        {
            "ok_below": float(t1),
            "defect_above": float(t2),
            "heldout_false_alarms": float((normals >= t2).mean()) if normals.size else None,
            "heldout_misses": float((defects < t1).mean()) if defects.size else None,
            "heldout_review": float(((scores >= t1) & (scores < t2)).mean()) if scores.size else None,
        }
    )
    return out


def fit_confidence(scores: np.ndarray, labels: np.ndarray, l2: float = 1e-3) -> Optional[Dict[str, Any]]:
    """Platt scaling: the logistic model of asinh(score) on the held-out images (exdd_scoring.verdict.confidence
    applies it), never decreasing in the score (a negative slope becomes the hold-out's defect rate); None without
    both a held-out normal and a held-out defect."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    if not ((y == 0).any() and (y == 1).any()):
        return None
    p = fit_fusion(np.arcsinh(scores)[:, None], y, l2=l2, iters=100, features=("asinh_score",), min_per_class=1)
    coef, intercept = p["coef"][0], p["intercept"]
    if coef < 0:  # held-out defects scored below normals: no evidence that a higher score means a defect
        coef, intercept = 0.0, float(np.log(y.mean() / (1 - y.mean())))  # the hold-out's defect rate
    return {
        "mean": p["mean"][0],
        "scale": p["scale"][0],
        "coef": coef,
        "intercept": intercept,
        "transform": "asinh",
        "heldout": p["heldout"],
    }
