"""Decision thresholds from scores of held-out training images (kept out of the banks)."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from exdd.metrics import f1_max

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
    allowed = int(np.floor(target_fpr * normals.size))   # normals allowed at or above t
    t = (float(np.nextafter(normals[normals.size - 1 - allowed], np.inf)) if allowed < normals.size
         else float(normals[0]))
    fpr = float((normals >= t).mean())
    return {"value": t, "rule": "fpr", "target_fpr": float(target_fpr), "heldout_fpr": fpr}
