"""The report's data: numbers and groupings computed from a results dict (no HTML, no drawing)."""

from __future__ import annotations

import html
import json
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from exdd_scoring.scores import MODES

MODE_ORDER = tuple(MODES)
DASH = "\u2014"


def finite_or_none(v: Any) -> Optional[float]:
    """v as a finite float, else None."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt_metric(v: Any, digits: int = 4) -> str:
    """A metric with fixed decimals, or a dash when missing."""
    f = finite_or_none(v)
    return DASH if f is None else f"{f:.{digits}f}"


def fmt_score(v: Any) -> str:
    """A score or threshold with 4 significant digits, or a dash."""
    f = finite_or_none(v)
    return DASH if f is None else f"{f:.4g}"


def esc(text: Any) -> str:
    """HTML-escaped str(text)."""
    return html.escape("" if text is None else str(text), quote=True)


def modes_of(results: Dict[str, Any]) -> List[str]:
    """The modes present in the results, in the canonical order first."""
    seen: List[str] = []
    for src in (results.get("metrics") or {}, results.get("thresholds") or {}):
        seen += [m for m in src if m not in seen]
    for im in results.get("images") or []:
        seen += [m for m in (im.get("scores") or {}) if m not in seen]
    return [m for m in MODE_ORDER if m in seen] + [m for m in seen if m not in MODE_ORDER]


def ok_images(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The images that were scored (no error)."""
    return [im for im in results.get("images") or [] if not im.get("error") and im.get("scores")]


def scores_labels(results: Dict[str, Any], mode: str, labelled_only: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Finite scores of a mode and their labels (-1 unknown), over the scored images."""
    s, y = [], []
    for im in ok_images(results):
        v, lab = finite_or_none(im["scores"].get(mode)), int(im.get("label", -1))
        if v is None or (labelled_only and lab not in (0, 1)):
            continue
        s.append(v)
        y.append(lab)
    return np.asarray(s, dtype=np.float64), np.asarray(y, dtype=np.int64)


def roc_of(scores: np.ndarray, labels: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(fpr, tpr) of scores against 0/1 labels, or None unless both classes are present."""
    from exdd.metrics import roc_curve

    if scores.size == 0 or labels.min() == labels.max():
        return None
    fpr, tpr, _ = roc_curve(scores, labels)
    return fpr, tpr


def _inlier_range(scores: np.ndarray, labels: np.ndarray) -> Tuple[float, float]:
    """The range of the scores that are not far outliers: beyond Tukey's far fences (3 IQR past the quartiles)
    of their own class (of all the scores for a class of fewer than 5), so a well separated defect class is
    never taken for outliers of the normal one."""

    def fences(v: np.ndarray) -> Tuple[float, float]:
        q1, q3 = np.percentile(v, [25, 75])
        iqr = q3 - q1 or (np.percentile(v, 90) - np.percentile(v, 10)) / 2
        return (q1 - 3 * iqr, q3 + 3 * iqr) if iqr > 0 else (-math.inf, math.inf)

    pooled = fences(scores)
    keep = np.zeros(scores.shape, dtype=bool)
    for c in np.unique(labels):
        sel = labels == c
        f = fences(scores[sel]) if sel.sum() >= 5 else pooled
        keep |= sel & (scores >= f[0]) & (scores <= f[1])
    inl = scores[keep] if keep.any() else scores
    return float(inl.min()), float(inl.max())


def histogram(
    scores: np.ndarray, labels: np.ndarray, thr: Optional[float], bins: int = 24, marks: Sequence[float] = ()
) -> Dict[str, Any]:
    """Counts of normal / defective / unknown scores over common bins whose range includes thr and marks.

    A few huge scores would squeeze every other bar into the first bin: when the scores beyond the far fences
    (see _inlier_range) stretch the range to more than twice that of the others, the bins stop there and the
    scores beyond are counted apart, per class, in 'over' (above edges[-1]) and 'under' (below edges[0])."""
    fixed = [v for v in [thr, *marks] if v is not None]
    if scores.size:
        lo, hi = float(scores.min()), float(scores.max())
        ilo, ihi = _inlier_range(scores, labels)
        if (ihi - ilo) * 2 < hi - lo:
            lo, hi = ilo, ihi
        lo, hi = min([lo, *fixed]), max([hi, *fixed])
    else:
        lo, hi = (min(fixed), max(fixed)) if fixed else (0.0, 1.0)
    pad = (hi - lo) * 0.04 or max(abs(hi) * 0.05, 1e-3)
    edges = np.linspace(lo - pad, hi + pad, bins + 1)
    groups = {"normal": labels == 0, "defective": labels == 1, "unknown": (labels != 0) & (labels != 1)}
    out: Dict[str, Any] = {"edges": edges.tolist()}
    for k, sel in groups.items():
        out[k] = np.histogram(scores[sel], edges)[0].astype(int).tolist()
    out["over"] = {k: int((scores[sel] > edges[-1]).sum()) for k, sel in groups.items()}
    out["under"] = {k: int((scores[sel] < edges[0]).sum()) for k, sel in groups.items()}
    out["min"], out["max"] = (float(scores.min()), float(scores.max())) if scores.size else (None, None)
    return out


def review_band(results: Dict[str, Any]) -> Tuple[Optional[Tuple[float, float]], str]:
    """((ok_below, defect_above), '') of the results' 'review_band' (scores between them go to a person);
    (None, '') when absent; (None, why) when it is not two finite numbers in order."""
    band = results.get("review_band")
    if band is None:
        return None, ""
    t1 = finite_or_none(band.get("ok_below")) if isinstance(band, dict) else None
    t2 = finite_or_none(band.get("defect_above")) if isinstance(band, dict) else None
    if t1 is None or t2 is None or t1 > t2:
        return None, (
            f"review_band {json.dumps(band, default=str)[:200]} not drawn: it needs ok_below <= "
            f"defect_above, two finite numbers"
        )
    return (t1, t2), ""


def confidence_labels(results: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray, int]:
    """The 'confidence' (0..1) of the scored images labelled 0 or 1, their labels, and how many confidences
    (of any image) were left out for lying outside 0..1."""
    c, y, bad = [], [], 0
    for im in ok_images(results):
        v, lab = finite_or_none(im.get("confidence")), int(im.get("label", -1))
        if v is not None and not 0.0 <= v <= 1.0:
            bad += 1
        elif v is not None and lab in (0, 1):
            c.append(v)
            y.append(lab)
    return np.asarray(c, dtype=np.float64), np.asarray(y, dtype=np.int64), bad


def reliability(conf: np.ndarray, labels: np.ndarray, bins: int = 10) -> Dict[str, Any]:
    """Confidence against the observed defect rate over equal-width bins of [0, 1]: per bin the count, the mean
    confidence and the defect rate (None in an empty bin); the expected calibration error (count-weighted mean
    of |rate - confidence|) and the Brier score."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    count, mean_conf, rate = [], [], []
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        count.append(n)
        mean_conf.append(float(conf[sel].mean()) if n else None)
        rate.append(float(labels[sel].mean()) if n else None)
    n = int(conf.size)
    ece = (
        sum(c / n * abs(r - m) for c, m, r in zip(count, mean_conf, rate) if c and r is not None and m is not None)
        if n
        else None
    )
    brier = float(np.mean((conf - labels) ** 2)) if n else None
    return {
        "edges": edges.tolist(),
        "count": count,
        "confidence": mean_conf,
        "rate": rate,
        "n": n,
        "ece": ece,
        "brier": brier,
    }


def gallery_groups(results: Dict[str, Any], mode: str, n: int = 6) -> List[Tuple[str, List[Dict[str, Any]]]]:
    """(title, images) groups: worst misses and best hits per class by the mode's score."""
    imgs = [im for im in ok_images(results) if finite_or_none(im["scores"].get(mode)) is not None]
    key = lambda im: float(im["scores"][mode])  # noqa: E731
    pos = sorted((im for im in imgs if im.get("label") == 1), key=key)
    neg = sorted((im for im in imgs if im.get("label") == 0), key=key, reverse=True)
    if not pos and not neg:
        ranked = sorted(imgs, key=key, reverse=True)
        k = min(n, (len(ranked) + 1) // 2)
        return [("Highest scores (unlabelled)", ranked[:k]), ("Lowest scores (unlabelled)", ranked[k:][-n:][::-1])]
    kp, kn = min(n, (len(pos) + 1) // 2), min(n, (len(neg) + 1) // 2)
    return [
        ("Defective, lowest scores (worst misses)", pos[:kp]),
        ("Normal, highest scores (worst false alarms)", neg[:kn]),
        ("Defective, highest scores (best hits)", pos[kp:][::-1][:n]),
        ("Normal, lowest scores (best hits)", neg[kn:][::-1][:n]),
    ]


def image_counts(results: Dict[str, Any]) -> Dict[str, int]:
    """Numbers of images: total, scored, defective, normal, unlabelled, errors."""
    imgs = results.get("images") or []
    ok = ok_images(results)
    errs = len(results.get("errors") or []) + sum(1 for im in imgs if im.get("error"))
    return {
        "images": len(imgs),
        "scored": len(ok),
        "defective": sum(1 for im in ok if im.get("label") == 1),
        "normal": sum(1 for im in ok if im.get("label") == 0),
        "unlabelled": sum(1 for im in ok if im.get("label") not in (0, 1)),
        "errors": errs,
    }
