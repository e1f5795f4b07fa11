"""One self-contained HTML evaluation report (inline CSS, inline SVG charts, base64 thumbnails).

Input is the results dict of ``exdd offline evaluate --out`` (the client's evaluation writes the
same keys). The page fetches nothing: a Content-Security-Policy forbids any non-data source.
The data behind the page is written next to it as JSON (same stem, ``.json``).
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

MODE_ORDER = ("patchcore", "exdd", "exdd_peak")
PALETTE = ("#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2")
NORMAL_COLOR, DEFECT_COLOR, UNKNOWN_COLOR = "#4e79a7", "#e15759", "#9aa0a6"
THUMB_BOX = (160, 240)  # (max width, max height) of a gallery thumbnail
SVG_NS = "http://www.w3.org/2000/svg"
DASH = "\u2014"

# (key, label, higher is better: True / False / None = not ranked)
METRIC_ROWS: Tuple[Tuple[str, str, Optional[bool]], ...] = (
    ("image_auroc", "Image AUROC", True),
    ("image_ap", "Image AP", True),
    ("image_f1_max", "Image F1-max", True),
    ("image_f1_threshold", "Image F1-max threshold", None),
    ("pixel_auroc", "Pixel AUROC", True),
    ("pixel_aupro", "Pixel AUPRO", True),
    ("pixel_f1_max", "Pixel F1-max", True),
)
AT_ROWS: Tuple[Tuple[str, str, Optional[bool]], ...] = (
    ("threshold", "Calibrated threshold", None),
    ("accuracy", "Accuracy @ threshold", True),
    ("tpr", "TPR (recall) @ threshold", True),
    ("fpr", "FPR @ threshold", False),
    ("precision", "Precision @ threshold", True),
    ("f1", "F1 @ threshold", True),
)

CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#f6f8fa;--accent:#0969da}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:#fff}
main{max-width:1240px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:24px;margin:0 0 2px}h2{font-size:18px;margin:32px 0 10px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:14px;margin:18px 0 8px;color:var(--muted);font-weight:600}
.sub{color:var(--muted);margin:0 0 16px}
.banner{border-radius:6px;padding:12px 16px;margin:14px 0;font-weight:600}
.banner.danger{background:#ffebe9;border:2px solid #cf222e;color:#82071e;font-size:16px}
.banner .detail{font-weight:400;font-size:13px;margin-top:4px}
.banner.info{background:#fff8c5;border:1px solid #d4a72c;color:#4d2d00}
.meta{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:8px 20px;background:var(--bg);
 border:1px solid var(--line);border-radius:6px;padding:14px 16px}
.meta div{min-width:0}.meta dt{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.meta dd{margin:0;overflow-wrap:anywhere;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
table.metrics{border-collapse:collapse;min-width:560px}
table.metrics th,table.metrics td{padding:6px 14px;border-bottom:1px solid var(--line);text-align:right}
table.metrics th:first-child,table.metrics td:first-child{text-align:left}
table.metrics thead th{background:var(--bg);border-bottom:2px solid var(--line)}
table.metrics tr.sep td{border-top:2px solid var(--line)}
td.best{font-weight:700;color:#116329}
.tag{display:inline-block;font-size:11px;font-weight:600;padding:0 6px;border-radius:10px;background:#ddf4ff;color:var(--accent);margin-left:6px;vertical-align:1px}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
.charts{display:flex;flex-wrap:wrap;gap:16px}
.two{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}.two>section{min-width:0}.two>section:first-child{max-width:620px}
.groups{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:4px 24px}
figure{margin:0;border:1px solid var(--line);border-radius:6px;padding:10px;background:#fff}
figcaption{font-size:12px;color:var(--muted);margin-top:4px}
svg text{font-family:-apple-system,"Segoe UI",Roboto,Arial,sans-serif}
.note{color:var(--muted);font-size:13px}
.gallery{display:flex;flex-wrap:wrap;gap:12px}
.card{width:178px;border:1px solid var(--line);border-radius:6px;padding:8px;background:var(--bg);font-size:12px}
.card .thumb{height:244px;display:flex;align-items:center;justify-content:center;background:#24292f;border-radius:4px;overflow:hidden}
.card img{max-width:160px;max-height:240px;display:block}
.card .missing{color:#ffb3b3;padding:8px;text-align:center;font-size:11px;overflow-wrap:anywhere}
.card .name{font-family:ui-monospace,Menlo,Consolas,monospace;margin-top:6px;overflow-wrap:anywhere}
.card .scores{color:var(--muted)}
.verdict{font-weight:700;padding:0 5px;border-radius:3px;color:#fff}
.TP{background:#1a7f37}.TN{background:#57606a}.FP{background:#bc4c00}.FN{background:#cf222e}
table.errors{border-collapse:collapse;font-size:12px}table.errors td{padding:4px 10px;border-bottom:1px solid var(--line);overflow-wrap:anywhere}
footer{margin-top:40px;color:var(--muted);font-size:12px;border-top:1px solid var(--line);padding-top:10px}
"""

LOAD_SCRIPT = """window.addEventListener('load',function(){var a=Array.prototype.slice.call(document.images);
document.body.dataset.imagesTotal=String(a.length);
document.body.dataset.imagesLoaded=String(a.filter(function(i){return i.complete&&i.naturalWidth>0;}).length);});"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


# ----------------------------------------------------------------------------- small helpers

def _num(v: Any) -> Optional[float]:
    """v as a finite float, else None."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _fmt(v: Any, digits: int = 4) -> str:
    """A metric with fixed decimals, or a dash when missing."""
    f = _num(v)
    return DASH if f is None else f"{f:.{digits}f}"


def _fmt_g(v: Any) -> str:
    """A score or threshold with 4 significant digits, or a dash."""
    f = _num(v)
    return DASH if f is None else f"{f:.4g}"


def _e(text: Any) -> str:
    """HTML-escaped str(text)."""
    return html.escape("" if text is None else str(text), quote=True)


def json_safe(obj: Any) -> Any:
    """obj with NaN/inf as None and numpy scalars/arrays as plain Python (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _num(obj)
    return obj


def modes_of(results: Dict[str, Any]) -> List[str]:
    """The modes present in the results, in the canonical order first."""
    seen: List[str] = []
    for src in (results.get("metrics") or {}, results.get("thresholds") or {}):
        seen += [m for m in src if m not in seen]
    for im in results.get("images") or []:
        seen += [m for m in (im.get("scores") or {}) if m not in seen]
    return [m for m in MODE_ORDER if m in seen] + [m for m in seen if m not in MODE_ORDER]


def _ok_images(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The images that were scored (no error)."""
    return [im for im in results.get("images") or [] if not im.get("error") and im.get("scores")]


def scores_labels(results: Dict[str, Any], mode: str, labelled_only: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Finite scores of a mode and their labels (-1 unknown), over the scored images."""
    s, y = [], []
    for im in _ok_images(results):
        v, lab = _num(im["scores"].get(mode)), int(im.get("label", -1))
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


def confusion_at(scores: np.ndarray, labels: np.ndarray, thr: float) -> Dict[str, float]:
    """Accuracy, TPR and FPR of 'score >= thr' against 0/1 labels."""
    pred, y = scores >= thr, labels.astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return {"accuracy": float((pred == y).mean()) if y.size else float("nan"),
            "tpr": float((pred & y).sum() / n_pos) if n_pos else float("nan"),
            "fpr": float((pred & ~y).sum() / n_neg) if n_neg else float("nan")}


def histogram(scores: np.ndarray, labels: np.ndarray, thr: Optional[float], bins: int = 24) -> Dict[str, Any]:
    """Counts of normal / defective / unknown scores over common bins whose range includes thr."""
    vals = list(scores) + ([thr] if thr is not None else [])
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    pad = (hi - lo) * 0.04 or max(abs(hi) * 0.05, 1e-3)
    edges = np.linspace(lo - pad, hi + pad, bins + 1)
    count = lambda sel: np.histogram(scores[sel], edges)[0].astype(int).tolist()  # noqa: E731
    return {"edges": edges.tolist(), "normal": count(labels == 0), "defective": count(labels == 1),
            "unknown": count((labels != 0) & (labels != 1))}


# ----------------------------------------------------------------------------- SVG charts

def _poly(xs: Sequence[float], ys: Sequence[float]) -> str:
    """SVG points attribute, consecutive duplicates (after rounding) dropped."""
    pts: List[str] = []
    for x, y in zip(xs, ys):
        p = f"{x:.1f},{y:.1f}"
        if not pts or pts[-1] != p:
            pts.append(p)
    return " ".join(pts)


def svg_roc(curves: Dict[str, Dict[str, Any]], colors: Dict[str, str], size: Tuple[int, int] = (420, 380)) -> str:
    """ROC curves of several modes in one inline SVG, with operating points and a legend."""
    w, h = size
    l, r, t, b = 52, 16, 14, 46
    pw, ph = w - l - r, h - t - b
    X = lambda v: l + v * pw  # noqa: E731
    Y = lambda v: t + (1 - v) * ph  # noqa: E731
    out = [f'<svg xmlns="{SVG_NS}" class="chart roc" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
           f'aria-label="ROC curves">', f'<rect x="{l}" y="{t}" width="{pw}" height="{ph}" fill="#fff" stroke="#8c959f"/>']
    for v in np.linspace(0, 1, 6):
        out.append(f'<line x1="{X(v):.1f}" y1="{t}" x2="{X(v):.1f}" y2="{t + ph}" stroke="#eaeef2"/>'
                   f'<line x1="{l}" y1="{Y(v):.1f}" x2="{l + pw}" y2="{Y(v):.1f}" stroke="#eaeef2"/>'
                   f'<text x="{X(v):.1f}" y="{t + ph + 16}" font-size="11" text-anchor="middle" fill="#59636e">{v:.1f}</text>'
                   f'<text x="{l - 6}" y="{Y(v) + 4:.1f}" font-size="11" text-anchor="end" fill="#59636e">{v:.1f}</text>')
    out.append(f'<line x1="{X(0)}" y1="{Y(0)}" x2="{X(1)}" y2="{Y(1)}" stroke="#afb8c1" stroke-dasharray="4 4"/>')
    out.append(f'<text x="{l + pw / 2}" y="{h - 8}" font-size="12" text-anchor="middle">False positive rate</text>'
               f'<text x="14" y="{t + ph / 2}" font-size="12" text-anchor="middle" '
               f'transform="rotate(-90 14 {t + ph / 2})">True positive rate</text>')
    for i, (mode, c) in enumerate(curves.items()):
        col = colors[mode]
        sw = 2.0 + 1.6 * (len(curves) - 1 - i)
        out.append(f'<polyline class="roc-curve" data-mode="{_e(mode)}" fill="none" stroke="{col}" stroke-width="{sw:.1f}" '
                   f'stroke-linejoin="round" points="{_poly([X(v) for v in c["fpr"]], [Y(v) for v in c["tpr"]])}"/>')
        op = c.get("operating_point")
        if op and op[0] is not None and op[1] is not None:
            out.append(f'<circle cx="{X(op[0]):.1f}" cy="{Y(op[1]):.1f}" r="4.5" fill="{col}" stroke="#fff" '
                       f'stroke-width="1.5"><title>{_e(mode)} at its threshold</title></circle>')
        ly = t + ph - 12 - 18 * (len(curves) - 1 - i)
        out.append(f'<rect x="{l + pw - 190}" y="{ly - 9}" width="12" height="3" fill="{col}"/>'
                   f'<text x="{l + pw - 172}" y="{ly - 3}" font-size="12">{_e(mode)}  AUROC {_fmt(c.get("auroc"), 3)}</text>')
    out.append("</svg>")
    return "".join(out)


def svg_histogram(hist: Dict[str, Any], thr: Optional[float], title: str, size: Tuple[int, int] = (356, 230)) -> str:
    """Overlaid score histograms (normal, defective, unknown) with the threshold as a vertical line."""
    w, h = size
    l, r, t, b = 40, 12, 26, 40
    pw, ph = w - l - r, h - t - b
    edges = np.asarray(hist["edges"])
    lo, hi = float(edges[0]), float(edges[-1])
    series = [(k, col) for k, col in (("normal", NORMAL_COLOR), ("defective", DEFECT_COLOR), ("unknown", UNKNOWN_COLOR))
              if sum(hist[k])]
    top = max([max(hist[k]) for k, _ in series] + [1])
    X = lambda v: l + (v - lo) / (hi - lo) * pw  # noqa: E731
    Y = lambda n: t + ph - n / top * ph  # noqa: E731
    out = [f'<svg xmlns="{SVG_NS}" class="chart hist" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
           f'aria-label="{_e(title)}">', f'<text x="{l}" y="16" font-size="13" font-weight="600">{_e(title)}</text>',
           f'<line x1="{l}" y1="{t + ph}" x2="{l + pw}" y2="{t + ph}" stroke="#8c959f"/>',
           f'<line x1="{l}" y1="{t}" x2="{l}" y2="{t + ph}" stroke="#8c959f"/>']
    for v in np.linspace(lo, hi, 5):
        out.append(f'<text x="{X(v):.1f}" y="{t + ph + 15}" font-size="10" text-anchor="middle" fill="#59636e">{v:.3g}</text>')
    out.append(f'<text x="{l - 5}" y="{Y(top) + 4:.1f}" font-size="10" text-anchor="end" fill="#59636e">{top}</text>'
               f'<text x="{l - 5}" y="{t + ph + 4}" font-size="10" text-anchor="end" fill="#59636e">0</text>'
               f'<text x="{l + pw / 2}" y="{h - 6}" font-size="11" text-anchor="middle">score</text>')
    for k, col in series:
        for i, n in enumerate(hist[k]):
            if n:
                x0, x1 = X(edges[i]), X(edges[i + 1])
                out.append(f'<rect class="bar-{k}" x="{x0 + 0.5:.1f}" y="{Y(n):.1f}" width="{max(x1 - x0 - 1, 0.5):.1f}" '
                           f'height="{t + ph - Y(n):.1f}" fill="{col}" fill-opacity="0.55"/>')
    if thr is not None:
        tx = X(thr)
        out.append(f'<line class="threshold" x1="{tx:.1f}" y1="{t - 4}" x2="{tx:.1f}" y2="{t + ph}" stroke="#1f2328" '
                   f'stroke-width="1.5" stroke-dasharray="5 3"/><text x="{tx + (4 if tx < l + pw * 0.7 else -4):.1f}" '
                   f'y="{t + 8}" font-size="10" text-anchor="{"start" if tx < l + pw * 0.7 else "end"}" paint-order="stroke" '
                   f'stroke="#fff" stroke-width="3">thr {thr:.4g}</text>')
    x = l + pw
    for k, col in reversed(series):
        label = f"{k} ({sum(hist[k])})"
        x -= 16 + 6.2 * len(label)
        out.append(f'<rect x="{x:.0f}" y="7" width="10" height="10" fill="{col}" fill-opacity="0.7"/>'
                   f'<text x="{x + 14:.0f}" y="16" font-size="11">{label}</text>')
    out.append("</svg>")
    return "".join(out)


# ----------------------------------------------------------------------------- gallery

def _resolve(path: str, base_dir: Optional[str]) -> str:
    """path as given when it exists, else relative to base_dir."""
    if path and not os.path.isabs(path) and base_dir and not os.path.exists(path):
        return os.path.join(base_dir, path)
    return path


def thumbnail_uri(path: str, box: Tuple[int, int] = THUMB_BOX) -> str:
    """A data: URI (JPEG) of the image at path, fitted into box = (max width, max height)."""
    from PIL import Image
    from exdd.images import read_image
    img = Image.fromarray(read_image(path))
    scale = min(box[0] / img.width, box[1] / img.height, 4.0)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    if size != img.size:
        img = img.resize(size, Image.LANCZOS if scale < 1 else Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def gallery_groups(results: Dict[str, Any], mode: str, n: int = 6) -> List[Tuple[str, List[Dict[str, Any]]]]:
    """(title, images) groups: worst misses and best hits per class by the mode's score."""
    imgs = [im for im in _ok_images(results) if _num(im["scores"].get(mode)) is not None]
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


def _verdict(label: int, score: float, thr: Optional[float]) -> str:
    """TP / FN / FP / TN of one image, or '' without a label or threshold."""
    if thr is None or label not in (0, 1):
        return ""
    return ("TP" if score >= thr else "FN") if label == 1 else ("FP" if score >= thr else "TN")


def _card(im: Dict[str, Any], mode: str, modes: Sequence[str], thr: Optional[float], base_dir: Optional[str]) -> str:
    """One gallery card: thumbnail (heatmap when present), name, verdict and scores."""
    src = im.get("heatmap") or im.get("path", "")
    kind = "heatmap" if im.get("heatmap") else "image"
    path = _resolve(src, base_dir)
    try:
        thumb = f'<img src="{thumbnail_uri(path)}" alt="{_e(os.path.basename(path))}" title="{_e(path)}">'
    except Exception as e:  # noqa: BLE001 - an unreadable file becomes a placeholder, not a failed report
        thumb = f'<div class="missing">{kind} not available<br>{_e(e)}</div>'
    score = float(im["scores"][mode])
    v = _verdict(int(im.get("label", -1)), score, thr)
    badge = f'<span class="verdict {v}">{v}</span> ' if v else ""
    others = ", ".join(f"{_e(m)} {_fmt_g(im['scores'].get(m))}" for m in modes if m != mode and m in im["scores"])
    extra = f' &middot; {_e(im["kind"])}' if im.get("kind") else ""
    return (f'<div class="card" data-kind="{kind}"><div class="thumb">{thumb}</div>'
            f'<div class="name">{_e(os.path.basename(im.get("path", "")))}</div>'
            f'<div>{badge}<b>{_e(mode)} {_fmt_g(score)}</b>{extra}</div>'
            f'<div class="scores">{others}</div></div>')


# ----------------------------------------------------------------------------- page sections

def _counts(results: Dict[str, Any]) -> Dict[str, int]:
    """Numbers of images: total, scored, defective, normal, unlabelled, errors."""
    imgs = results.get("images") or []
    ok = _ok_images(results)
    errs = len(results.get("errors") or []) + sum(1 for im in imgs if im.get("error"))
    return {"images": len(imgs), "scored": len(ok), "defective": sum(1 for im in ok if im.get("label") == 1),
            "normal": sum(1 for im in ok if im.get("label") == 0),
            "unlabelled": sum(1 for im in ok if im.get("label") not in (0, 1)), "errors": errs}


def _header(results: Dict[str, Any], title: str, generated: str, counts: Dict[str, int], modes: Sequence[str]) -> str:
    """Title, weights banner and the run's facts."""
    weights, note = str(results.get("weights") or ""), str(results.get("weights_note") or "")
    banner = ""
    if "random" in (weights + " " + note).lower():
        banner = (f'<div class="banner danger" id="weights-warning">&#9888; RANDOM-INIT BACKBONE: scores, metrics '
                  f'and heatmaps in this report do not reflect real detection quality.<div class="detail">weights '
                  f'<code>{_e(weights)}</code>{" &middot; note: " + _e(note) if note else ""}</div></div>')
    elif note:
        banner = f'<div class="banner info" id="weights-note">Weights note: {_e(note)}</div>'
    thr = results.get("thresholds") or {}
    dm = results.get("default_mode")
    thr_txt = ", ".join(f"{_e(m)} {_fmt_g(thr[m])}" for m in modes if m in thr) or DASH
    img_txt = (f"{counts['scored']} scored: {counts['defective']} defective, {counts['normal']} normal"
               + (f", {counts['unlabelled']} unlabelled" if counts["unlabelled"] else "")
               + f"; {counts['errors']} unreadable")
    facts = [("Dataset", results.get("dataset")), ("Split", results.get("split")), ("Banks", results.get("banks")),
             ("Weights", weights or None), ("Default mode", dm), ("Thresholds", None), ("Images", None),
             ("Evaluated", results.get("date") or results.get("evaluated_at")),
             ("Scoring time", f"{results['seconds']} s" if _num(results.get("seconds")) is not None else None),
             ("Report generated", generated)]
    cells = []
    for k, v in facts:
        if k == "Thresholds":
            cells.append(f"<div><dt>{k}</dt><dd>{thr_txt}</dd></div>")
        elif k == "Images":
            cells.append(f"<div><dt>{k}</dt><dd>{_e(img_txt)}</dd></div>")
        elif v not in (None, ""):
            cells.append(f"<div><dt>{k}</dt><dd>{_e(v)}</dd></div>")
    return (f"<header><h1>{_e(title)}</h1><p class=\"sub\">ExDD surface-defect detection &middot; modes side by side"
            f"</p>{banner}<dl class=\"meta\">{''.join(cells)}</dl></header>")


def _metrics_table(results: Dict[str, Any], modes: Sequence[str], at: Dict[str, Dict[str, Any]]) -> str:
    """The metrics of every mode side by side, the best value of each row in bold."""
    metrics = results.get("metrics") or {}
    dm = results.get("default_mode")
    if not modes:
        return '<p class="note">No metrics in the results.</p>'
    head = "".join(f'<th><span class="swatch" style="background:{PALETTE[i % len(PALETTE)]}"></span>{_e(m)}'
                   f'{"<span class=tag>default</span>" if m == dm else ""}</th>' for i, m in enumerate(modes))
    rows = []
    for group, table in ((METRIC_ROWS, {m: metrics.get(m) or {} for m in modes}), (AT_ROWS, at)):
        for j, (key, label, higher) in enumerate(group):
            vals = [_num((table.get(m) or {}).get(key)) for m in modes]
            if group is AT_ROWS and all(v is None for v in vals):
                continue
            finite = [v for v in vals if v is not None]
            best = (max(finite) if higher else min(finite)) if finite and higher is not None and len(modes) > 1 else None
            fmt = _fmt_g if key in ("threshold", "image_f1_threshold") else _fmt
            tds = "".join(f'<td class="{"best" if v is not None and best is not None and abs(v - best) < 1e-12 else ""}">'
                          f'{fmt(v)}</td>' for v in vals)
            sep = ' class="sep"' if group is AT_ROWS and j == 0 else ""
            rows.append(f'<tr{sep} data-metric="{key}"><td>{label}</td>{tds}</tr>')
    return (f'<table class="metrics" id="metrics"><thead><tr><th>Metric</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table><p class="note">Bold: best mode per row. '
            f'Pixel AUPRO integrates the per-region overlap up to 30% FPR. A dash means not measured '
            f'(no masks, no labels or a single class).</p>')


def _errors(results: Dict[str, Any]) -> str:
    """A table of unreadable or failed images, or ''."""
    errs = [(e.get("path"), e.get("error")) for e in results.get("errors") or []]
    errs += [(im.get("path"), im.get("error")) for im in results.get("images") or [] if im.get("error")]
    if not errs:
        return ""
    rows = "".join(f"<tr><td>{_e(p)}</td><td>{_e(m)}</td></tr>" for p, m in errs)
    return f'<h2>Unreadable images ({len(errs)})</h2><table class="errors" id="errors"><tbody>{rows}</tbody></table>'


# ----------------------------------------------------------------------------- the report

def build_report(results: Dict[str, Any], title: str = "ExDD evaluation report", base_dir: Optional[str] = None,
                 generated: Optional[str] = None, gallery_n: int = 6) -> Tuple[str, Dict[str, Any]]:
    """The report page as an HTML string and the data behind it (JSON-safe)."""
    generated = generated or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    modes = modes_of(results)
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(modes)}
    thresholds = {m: _num(v) for m, v in (results.get("thresholds") or {}).items()}
    counts = _counts(results)
    data: Dict[str, Any] = {"title": title, "generated": generated, "modes": modes, "counts": counts,
                            "roc": {}, "histograms": {}, "at_threshold": {}, "gallery": {}}
    at: Dict[str, Dict[str, Any]] = {}
    for m in modes:
        given = dict(((results.get("metrics") or {}).get(m) or {}).get("at_threshold") or {})
        s, y = scores_labels(results, m)
        thr = thresholds.get(m, _num(given.get("threshold")))
        if thr is not None and s.size and y.min() != y.max():
            mine = confusion_at(s, y, thr)
            given.setdefault("accuracy", mine["accuracy"])
            given.setdefault("tpr", mine["tpr"])
            given.setdefault("fpr", mine["fpr"])
        if thr is not None:
            given.setdefault("threshold", thr)
        at[m] = given
        curve = roc_of(s, y)
        if curve is not None:
            from exdd.metrics import auroc
            op = (_num(given.get("fpr")), _num(given.get("tpr")))
            data["roc"][m] = {"fpr": curve[0].tolist(), "tpr": curve[1].tolist(), "auroc": auroc(s, y),
                              "operating_point": op if thr is not None else None}
        sa, ya = scores_labels(results, m, labelled_only=False)
        if sa.size:
            data["histograms"][m] = histogram(sa, ya, thr)
    data["at_threshold"] = at

    if data["roc"]:
        roc = (f'<figure>{svg_roc(data["roc"], colors)}<figcaption>Image-level ROC per mode from the per-image '
               f'scores;<br>dots mark each mode\'s calibrated threshold.</figcaption></figure>')
    else:
        roc = '<p class="note" id="no-roc">No ROC: it needs images labelled both normal and defective.</p>'
    parts = [_header(results, title, generated, counts, modes),
             f'<div class="two"><section><h2>Metrics</h2>{_metrics_table(results, modes, at)}</section>'
             f'<section><h2>ROC curves</h2>{roc}</section></div>']
    parts.append("<h2>Score distributions</h2>")
    if data["histograms"]:
        figs = "".join(f'<figure>{svg_histogram(h, thresholds.get(m), m + (" (default)" if m == results.get("default_mode") else ""))}'
                       f'</figure>' for m, h in data["histograms"].items())
        parts.append(f'<div class="charts">{figs}</div><p class="note">Normal vs defective image scores per mode; '
                     f'the dashed line is the calibrated threshold (score &ge; threshold is flagged).</p>')
    else:
        parts.append('<p class="note">No scored images.</p>')
    gm = results.get("default_mode") if results.get("default_mode") in modes else (modes[0] if modes else None)
    if gm is not None and _ok_images(results):
        parts.append(f"<h2>Gallery <span class=\"tag\">by {_e(gm)} score</span></h2>")
        if any(im.get("heatmap") for im in _ok_images(results)):
            from .overlay import GT_COLOR, PRED_COLOR
            rgb = lambda c: "rgb(%d,%d,%d)" % c  # noqa: E731
            parts.append(f'<p class="note">Heatmaps: anomaly map in a blue-to-red colour scale over the image; '
                         f'<span class="swatch" style="background:{rgb(PRED_COLOR)};border:1px solid #8c959f"></span>'
                         f'predicted defect contour, <span class="swatch" style="background:{rgb(GT_COLOR)}"></span>'
                         f'ground-truth contour.</p>')
        groups = []
        for gtitle, imgs in gallery_groups(results, gm, gallery_n):
            data["gallery"][gtitle] = [im.get("path") for im in imgs]
            if imgs:
                cards = "".join(_card(im, gm, modes, thresholds.get(gm), base_dir) for im in imgs)
                groups.append(f'<section><h3>{_e(gtitle)}</h3><div class="gallery">{cards}</div></section>')
        parts.append(f'<div class="groups">{"".join(groups)}</div>')
    parts.append(_errors(results))
    parts.append(f'<footer>Generated by exdd on {_e(generated)}. Self-contained: every image is embedded, '
                 f'nothing is fetched.</footer>')
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<title>{_e(title)}</title><style>{CSS}</style></head><body><main>{"".join(parts)}</main>'
            f'<script>{LOAD_SCRIPT}</script></body></html>')
    return page, json_safe(data)


def json_path_of(out_html: str) -> str:
    """Where the JSON behind a report goes: next to it, same stem ('report.html' -> 'report.json')."""
    return os.path.splitext(out_html)[0] + ".json"


def _write_atomic(path: str, text: str) -> None:
    """Write text to path through a temporary file in the same folder."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_report(results: Dict[str, Any], out_html: str, title: str = "ExDD evaluation report",
                 base_dir: Optional[str] = None, gallery_n: int = 6) -> str:
    """Write the self-contained HTML report and its JSON (results + chart data) and return the HTML path."""
    folder = os.path.dirname(os.path.abspath(out_html))
    os.makedirs(folder, exist_ok=True)
    page, data = build_report(results, title, base_dir, gallery_n=gallery_n)
    out_json = json_path_of(out_html)
    _write_atomic(out_json, json.dumps({**json_safe(results), "report": data}, indent=1, allow_nan=False))
    _write_atomic(out_html, page)
    return out_html
