"""A small calibrated fusion of negative and positive evidence: L2-regularised logistic regression.

Features per image (log space): the negative bank's reweighted score s-, the maximum of the smoothed
ratio map, and the positive bank's reweighted score s+. The model is fitted on the held-out calibration
images at build time; its parameters are plain numbers stored in the bank manifest (no pickle). When the
hold-out has fewer than ``MIN_PER_CLASS`` images of either class the fit is not attempted and the fixed
fallback ``log s- + log max(ratio map)`` is used, and the manifest says so.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

FEATURES = ("log_s_neg", "log_ratio_map_max", "log_s_pos")
MIN_PER_CLASS = 5
FALLBACK = {
    "features": list(FEATURES),
    "mean": [0.0, 0.0, 0.0],
    "scale": [1.0, 1.0, 1.0],
    "coef": [1.0, 1.0, 0.0],
    "intercept": 0.0,
    "fitted": False,
    "note": f"fixed fallback log s- + log max(ratio map): fewer than {MIN_PER_CLASS} held-out images of a class",
}


def fusion_features(s_neg: Any, ratio_map_max: Any, s_pos: Any, xp: Any, tiny: float = 1e-12) -> Any:
    """(B, 3) log features of the fusion from per-image evidence."""
    cols = [xp.log(xp.maximum(v, tiny)) for v in (s_neg, ratio_map_max, s_pos)]
    return xp.stack(cols, axis=1)


def fusion_score(x: Any, params: Dict[str, Any], xp: Any) -> Any:
    """The fused score (the logistic model's log-odds) of (B, 3) features."""
    mean, scale = xp.asarray(params["mean"], dtype=x.dtype), xp.asarray(params["scale"], dtype=x.dtype)
    coef = xp.asarray(params["coef"], dtype=x.dtype)
    return ((x - mean) / scale) @ coef + float(params["intercept"])


def fit_fusion(
    x: np.ndarray,
    labels: Union[Sequence[int], np.ndarray],
    l2: float = 1.0,
    iters: int = 50,
    features: Sequence[str] = FEATURES,
    fallback: Optional[Dict[str, Any]] = None,
    min_per_class: int = MIN_PER_CLASS,
) -> Dict[str, Any]:
    """Parameters of an L2-regularised logistic regression on standardised features (Newton steps);
    fallback (the fusion's FALLBACK) when either class has fewer than min_per_class images.
    features names x's columns (the fusion's three by default; the image head's are scores.HEAD_FEATURES)."""
    y = np.asarray(labels, dtype=np.float64)
    if min(int((y == 1).sum()), int((y == 0).sum())) < max(min_per_class, 1):
        return dict(FALLBACK if fallback is None else fallback)
    x = np.asarray(x, dtype=np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.c_[(x - mean) / scale, np.ones(len(y))]
    w = np.zeros(z.shape[1])
    reg = np.r_[np.full(z.shape[1] - 1, l2), 0.0]  # the intercept is not penalised
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        grad = z.T @ (p - y) + reg * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return {
        "features": list(features),
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "coef": w[:-1].tolist(),
        "intercept": float(w[-1]),
        "fitted": True,
        "l2": l2,
        "heldout": {"normal": int((y == 0).sum()), "defective": int((y == 1).sum())},
    }
