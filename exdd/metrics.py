"""Detection metrics: AUROC, average precision, F1-max, per-region overlap (AUPRO).

All from one descending sort of the scores; ties are grouped so equal scores share a
threshold (the same conventions as scikit-learn's roc_auc_score and average_precision_score).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np


def trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Area under the piecewise-linear curve y(x) (the trapezoidal rule; works on NumPy 1.x and 2.x)."""
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) * 0.5))


def _curve(
    scores: np.ndarray, labels: np.ndarray, weights: Optional[np.ndarray] = None
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct threshold (descending), and thresholds; with weights,
    each image counts its weight."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64).ravel()[order]
        return np.cumsum(w * y)[last], np.cumsum(w * ~y)[last], s[last]
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return tp.astype(np.float64), fp.astype(np.float64), s[last]


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (nan when only one class is present)."""
    tp, fp, _ = _curve(scores, labels)
    if tp[-1] == 0 or fp[-1] == 0:
        return float("nan")
    tpr = np.r_[0.0, tp / tp[-1]]
    fpr = np.r_[0.0, fp / fp[-1]]
    return trapezoid(tpr, fpr)


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score."""
    tp, fp, thr = _curve(scores, labels)
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)], np.r_[np.inf, thr]


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision: sum over thresholds of (R_n - R_{n-1}) P_n."""
    tp, fp, _ = _curve(scores, labels)
    if tp[-1] == 0:
        return float("nan")
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1_max(scores: np.ndarray, labels: np.ndarray, weights: Optional[np.ndarray] = None) -> Tuple[float, float]:
    """Best F1 over thresholds and the threshold achieving it (predict defect when score >= it; ties: the highest);
    with weights, F1 of the weighted counts."""
    tp, fp, thr = _curve(scores, labels, weights)
    if tp[-1] == 0:
        return float("nan"), float("nan")
    fn = tp[-1] - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1e-12)
    i = int(np.argmax(f1))
    return float(f1[i]), float(thr[i])


def confusion(scores: np.ndarray, labels: np.ndarray, thr: float) -> Dict[str, float]:
    """Threshold, accuracy, TPR, FPR, precision and F1 of 'score >= thr' against 0/1 labels (0 for an empty class)."""
    pred = scores >= thr
    y = labels.astype(bool)
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    prec = tp / max(tp + fp, 1)
    rec = tp / max(tp + fn, 1)
    return {
        "threshold": float(thr),
        "accuracy": float((pred == y).mean()) if y.size else float("nan"),
        "tpr": rec,
        "fpr": fp / max(int((~y).sum()), 1),
        "precision": prec,
        "f1": 2 * prec * rec / max(prec + rec, 1e-12),
    }


def aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to max_fpr, normalised to [0, 1].

    maps, masks: (N, H, W). Each connected defect region weighs equally; PRO at a threshold is
    the mean over regions of the fraction of the region above it, FPR is over normal pixels.
    """
    from scipy import ndimage

    maps = np.asarray(maps, dtype=np.float32)
    masks = np.asarray(masks).astype(bool)
    weight = np.zeros(masks.shape, dtype=np.float64)
    n_regions = 0
    for i in range(masks.shape[0]):
        lab, n = ndimage.label(masks[i])
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())
        w = np.where(lab > 0, 1.0 / sizes[lab], 0.0)
        weight[i] = w
        n_regions += n
    if n_regions == 0 or masks.all():
        return float("nan")
    s = maps.ravel()
    order = np.argsort(-s, kind="mergesort")
    s = s[order]
    w = weight.ravel()[order] / n_regions
    normal = ~masks.ravel()[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    pro = np.cumsum(w)[last]
    fpr = np.cumsum(normal)[last] / normal.sum()
    pro, fpr = np.r_[0.0, pro], np.r_[0.0, fpr]
    # cut at max_fpr, interpolating the last segment
    j = int(np.searchsorted(fpr, max_fpr, side="right"))
    if j < fpr.size:
        f0, f1_, p0, p1 = fpr[j - 1], fpr[j], pro[j - 1], pro[j]
        p_cut = p0 + (p1 - p0) * (max_fpr - f0) / max(f1_ - f0, 1e-12)
        fpr, pro = np.r_[fpr[:j], max_fpr], np.r_[pro[:j], p_cut]
    return trapezoid(pro, fpr) / max_fpr


def summary(
    image_scores: np.ndarray, image_labels: np.ndarray, maps: np.ndarray | None, masks: np.ndarray | None
) -> Dict[str, float]:
    """The evaluation's metrics for one mode (pixel metrics when maps and masks are given)."""
    f1, thr = f1_max(image_scores, image_labels)
    out = {
        "image_auroc": auroc(image_scores, image_labels),
        "image_ap": average_precision(image_scores, image_labels),
        "image_f1_max": f1,
        "image_f1_threshold": thr,
    }
    if maps is not None and masks is not None:
        out["pixel_auroc"] = auroc(maps.ravel(), masks.ravel())
        out["pixel_aupro"] = aupro(maps, masks)
        out["pixel_f1_max"] = f1_max(maps.ravel(), masks.ravel())[0]
    return out


def bootstrap_auroc(
    scores: np.ndarray, labels: np.ndarray, n: int = 1000, seed: int = 0, level: float = 0.9, max_bins: int = 4096
) -> Tuple[float, float, float]:
    """(AUROC, low, high): the AUROC and its percentile bootstrap interval at ``level``, resampling items.

    An item is a row of axis 0: one image's score (scores, labels (N,)) or one image's whole map
    (scores, labels (N, H, W): pixel AUROC resampled by image). Each of the n seeded resamples draws N
    items with replacement (``default_rng(seed).integers(0, N, (n, N))``); resamples holding one class
    only are skipped. Exact (ties count half, as ``auroc``) when the scores have at most max_bins
    distinct values, as image scores do; otherwise scores are binned at max_bins quantiles (error of
    the order of 1/max_bins, fine for an interval; take the point estimate from ``auroc`` then).
    """
    s, y = np.asarray(scores), np.asarray(labels)
    if s.shape != y.shape or s.ndim == 0 or s.shape[0] == 0:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must have the same non-empty shape")
    N = s.shape[0]
    s, y = s.reshape(N, -1), y.reshape(N, -1)
    rows = max(1, 2_000_000 // s.shape[1])  # rows per chunk: bounded memory on big maps
    chunks = [slice(i, i + rows) for i in range(0, N, rows)]
    levels = np.zeros(0)
    for c in chunks:  # distinct values, while there are few
        levels = np.union1d(levels, np.unique(s[c].astype(np.float64)))
        if levels.size > max_bins:
            break
    if levels.size > max_bins:  # bin (levels[b-1], levels[b]] by quantiles
        sub = s.ravel()[:: max(1, s.size // 1_000_000)].astype(np.float64)
        levels = np.unique(np.quantile(sub, np.linspace(0, 1, max_bins + 1)[1:-1]))
    B = levels.size + 1
    hp, hn = np.zeros((N, B)), np.zeros((N, B))
    for c in chunks:
        idx = np.searchsorted(levels, s[c].astype(np.float64), side="left")
        cell = (np.arange(idx.shape[0])[:, None] * B + idx).ravel()
        yy = y[c].ravel().astype(bool)
        hp[c] = np.bincount(cell[yy], minlength=idx.shape[0] * B).reshape(-1, B)
        hn[c] = np.bincount(cell[~yy], minlength=idx.shape[0] * B).reshape(-1, B)

    def area(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
        """AUROC per row from positive / negative histograms (R, B) over ascending bins."""
        below = np.cumsum(Q, axis=1) - Q
        tot = P.sum(1) * Q.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(tot > 0, (P * (below + 0.5 * Q)).sum(1) / tot, np.nan)

    point = float(area(hp.sum(0)[None], hn.sum(0)[None])[0])
    draws = np.random.default_rng(seed).integers(0, N, (n, N))
    vals = []
    for i in range(0, n, 128):
        w = np.stack([np.bincount(r, minlength=N) for r in draws[i : i + 128]]).astype(np.float64)
        vals.append(area(w @ hp, w @ hn))
    v = np.concatenate(vals) if vals else np.zeros(0)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return point, float("nan"), float("nan")
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return point, float(lo), float(hi)


def paired_bootstrap_diff(
    a: np.ndarray, b: np.ndarray, labels: np.ndarray, n: int = 2000, seed: int = 0, level: float = 0.9
) -> Tuple[float, float, float]:
    """(AUROC(b) - AUROC(a), low, high): the difference of two scorings of the same images and its percentile
    bootstrap interval, resampling images stratified by label (both classes in every resample)."""
    a, b, y = np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(labels).astype(bool)
    if not (a.shape == b.shape == y.shape) or y.all() or not y.any():
        raise ValueError(f"scores {a.shape}, {b.shape} and labels {y.shape}: same shape, both classes needed")
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    draws = np.concatenate([rng.choice(pos, (n, pos.size)), rng.choice(neg, (n, neg.size))], axis=1)
    diffs = np.array([auroc(b[i], y[i]) - auroc(a[i], y[i]) for i in draws])
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return auroc(b, y) - auroc(a, y), float(lo), float(hi)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); nan below 3 items."""
    from scipy.stats import spearmanr

    if len(a) < 3:
        return float("nan")
    return float(spearmanr(a, b).correlation)
