"""The report's charts: inline SVG (ROC curves, score histograms) from the data of report_data."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .data import esc, fmt_metric

NORMAL_COLOR, DEFECT_COLOR, UNKNOWN_COLOR = "#4e79a7", "#e15759", "#9aa0a6"
SVG_NS = "http://www.w3.org/2000/svg"


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
        out.append(f'<polyline class="roc-curve" data-mode="{esc(mode)}" fill="none" stroke="{col}" stroke-width="{sw:.1f}" '
                   f'stroke-linejoin="round" points="{_poly([X(v) for v in c["fpr"]], [Y(v) for v in c["tpr"]])}"/>')
        op = c.get("operating_point")
        if op and op[0] is not None and op[1] is not None:
            out.append(f'<circle cx="{X(op[0]):.1f}" cy="{Y(op[1]):.1f}" r="4.5" fill="{col}" stroke="#fff" '
                       f'stroke-width="1.5"><title>{esc(mode)} at its threshold</title></circle>')
        ly = t + ph - 12 - 18 * (len(curves) - 1 - i)
        out.append(f'<rect x="{l + pw - 190}" y="{ly - 9}" width="12" height="3" fill="{col}"/>'
                   f'<text x="{l + pw - 172}" y="{ly - 3}" font-size="12">{esc(mode)}  AUROC {fmt_metric(c.get("auroc"), 3)}</text>')
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
           f'aria-label="{esc(title)}">', f'<text x="{l}" y="16" font-size="13" font-weight="600">{esc(title)}</text>',
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

