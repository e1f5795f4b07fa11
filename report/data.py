"""The report's data: numbers and groupings computed from a results dict (no HTML, no drawing)."""
from __future__ import annotations

import html
import math
from typing import Any, Dict, List, Optional, Tuple

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


def histogram(scores: np.ndarray, labels: np.ndarray, thr: Optional[float], bins: int = 24) -> Dict[str, Any]:
    """Counts of normal / defective / unknown scores over common bins whose range includes thr."""
    vals = list(scores) + ([thr] if thr is not None else [])
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    pad = (hi - lo) * 0.04 or max(abs(hi) * 0.05, 1e-3)
    edges = np.linspace(lo - pad, hi + pad, bins + 1)
    count = lambda sel: np.histogram(scores[sel], edges)[0].astype(int).tolist()  # noqa: E731
    return {"edges": edges.tolist(), "normal": count(labels == 0), "defective": count(labels == 1),
            "unknown": count((labels != 0) & (labels != 1))}



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
    return [("Defective, lowest scores (worst misses)", pos[:kp]),
            ("Normal, highest scores (worst false alarms)", neg[:kn]),
            ("Defective, highest scores (best hits)", pos[kp:][::-1][:n]),
            ("Normal, lowest scores (best hits)", neg[kn:][::-1][:n])]



def image_counts(results: Dict[str, Any]) -> Dict[str, int]:
    """Numbers of images: total, scored, defective, normal, unlabelled, errors."""
    imgs = results.get("images") or []
    ok = ok_images(results)
    errs = len(results.get("errors") or []) + sum(1 for im in imgs if im.get("error"))
    return {"images": len(imgs), "scored": len(ok), "defective": sum(1 for im in ok if im.get("label") == 1),
            "normal": sum(1 for im in ok if im.get("label") == 0),
            "unlabelled": sum(1 for im in ok if im.get("label") not in (0, 1)), "errors": errs}

