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
    left, r, t, b = 52, 16, 14, 46
    pw, ph = w - left - r, h - t - b
    X = lambda v: left + v * pw  # noqa: E731
    Y = lambda v: t + (1 - v) * ph  # noqa: E731
    out = [
        f'<svg xmlns="{SVG_NS}" class="chart roc" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        f'aria-label="ROC curves">',
        f'<rect x="{left}" y="{t}" width="{pw}" height="{ph}" fill="#fff" stroke="#8c959f"/>',
    ]
    for v in np.linspace(0, 1, 6):
        out.append(
            f'<line x1="{X(v):.1f}" y1="{t}" x2="{X(v):.1f}" y2="{t + ph}" stroke="#eaeef2"/>'
            f'<line x1="{left}" y1="{Y(v):.1f}" x2="{left + pw}" y2="{Y(v):.1f}" stroke="#eaeef2"/>'
            f'<text x="{X(v):.1f}" y="{t + ph + 16}" font-size="11" text-anchor="middle" '
            f'fill="#59636e">{v:.1f}</text>'
            f'<text x="{left - 6}" y="{Y(v) + 4:.1f}" font-size="11" text-anchor="end" '
            f'fill="#59636e">{v:.1f}</text>'
        )
    out.append(f'<line x1="{X(0)}" y1="{Y(0)}" x2="{X(1)}" y2="{Y(1)}" stroke="#afb8c1" stroke-dasharray="4 4"/>')
    out.append(
        f'<text x="{left + pw / 2}" y="{h - 8}" font-size="12" text-anchor="middle">False positive rate</text>'
        f'<text x="14" y="{t + ph / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {t + ph / 2})">True positive rate</text>'
    )
    for i, (mode, c) in enumerate(curves.items()):
        col = colors[mode]
        sw = 2.0 + 1.6 * (len(curves) - 1 - i)
        out.append(
            f'<polyline class="roc-curve" data-mode="{esc(mode)}" fill="none" stroke="{col}" '
            f'stroke-width="{sw:.1f}" '
            f'stroke-linejoin="round" points="{_poly([X(v) for v in c["fpr"]], [Y(v) for v in c["tpr"]])}"/>'
        )
        op = c.get("operating_point")
        if op and op[0] is not None and op[1] is not None:
            out.append(
                f'<circle cx="{X(op[0]):.1f}" cy="{Y(op[1]):.1f}" r="4.5" fill="{col}" stroke="#fff" '
                f'stroke-width="1.5"><title>{esc(mode)} at its threshold</title></circle>'
            )
        ly = t + ph - 12 - 18 * (len(curves) - 1 - i)
        out.append(
            f'<rect x="{left + pw - 190}" y="{ly - 9}" width="12" height="3" fill="{col}"/>'
            f'<text x="{left + pw - 172}" y="{ly - 3}" font-size="12">{esc(mode)}  '
            f"AUROC {fmt_metric(c.get('auroc'), 3)}</text>"
        )
    out.append("</svg>")
    return "".join(out)


BAND_COLOR = "#f2c744"  # the review band: scores a person looks at
CHAR_W = 6.4  # width of one character of an 11 px label, generous (DejaVu Sans is wider than Arial)


def _legend(items: Sequence[Tuple[str, str, str]], x0: float, y0: float, width: float) -> Tuple[str, float]:
    """Legend entries (label, colour, kind: rect or band) placed left to right, a new row when the next would pass
    x0 + width: (svg, height used)."""
    out, x, y = [], x0, y0
    for label, col, kind in items:
        w = 16 + CHAR_W * len(label)
        if x > x0 and x + w > x0 + width:
            x, y = x0, y + 17
        sw = (
            f'<rect x="{x:.0f}" y="{y:.0f}" width="10" height="10" fill="{col}" fill-opacity="0.7"/>'
            if kind == "rect"
            else f'<rect x="{x:.0f}" y="{y:.0f}" width="10" height="10" fill="{col}" fill-opacity="0.35" '
            f'stroke="{col}"/>'
        )
        out.append(
            f'<g class="legend-item">{sw}<text x="{x + 14:.0f}" y="{y + 9:.0f}" font-size="11">{esc(label)}</text></g>'
        )
        x += w + 10
    return "".join(out), y - y0 + 17


def svg_histogram(
    hist: Dict[str, Any],
    thr: Optional[float],
    title: str,
    size: Tuple[int, int] = (356, 250),
    band: Optional[Tuple[float, float]] = None,
) -> str:
    """Overlaid score histograms (normal, defective, unknown) with the threshold as a vertical line, the review band
    (ok_below, defect_above) shaded, and the scores beyond the bins (hist's 'over' / 'under') as a bar apart on
    each side, said in a note under the axis. The title, then the legend, each on its own rows above the plot."""
    w, h0 = size
    series = [
        (k, col)
        for k, col in (("normal", NORMAL_COLOR), ("defective", DEFECT_COLOR), ("unknown", UNKNOWN_COLOR))
        if sum(hist[k]) or (hist.get("over") or {}).get(k) or (hist.get("under") or {}).get(k)
    ]
    over = {k: (hist.get("over") or {}).get(k, 0) for k, _ in series}
    under = {k: (hist.get("under") or {}).get(k, 0) for k, _ in series}
    n_over, n_under = sum(over.values()), sum(under.values())
    left, r = 40, 12
    items = [(f"{k} ({sum(hist[k]) + over[k] + under[k]})", col, "rect") for k, col in series]
    if band is not None:
        items.append((f"review {band[0]:.3g}\u2013{band[1]:.3g}", BAND_COLOR, "band"))
    legend, lh = _legend(items, left, 24, w - left - r)
    notes = []
    edges = np.asarray(hist["edges"])
    lo, hi = float(edges[0]), float(edges[-1])
    mn, mx = (lo if hist.get("min") is None else hist["min"]), (hi if hist.get("max") is None else hist["max"])
    if n_over:
        notes.append(f"\u00bb bar: {n_over} score{'s' if n_over > 1 else ''} above {hi:.3g} (max {mx:.3g})")
    if n_under:
        notes.append(f"\u00ab bar: {n_under} score{'s' if n_under > 1 else ''} below {lo:.3g} (min {mn:.3g})")
    t = 24 + lh + 8
    b = 40 + 14 * len(notes)
    ph = h0 - 24 - 8 - 40  # the plot keeps its height; the svg grows with the legend rows and notes
    h = t + ph + b
    side = 30  # width of an out-of-range bar, apart from the bins by a gap
    px0 = left + (side + 8 if n_under else 0)
    px1 = w - r - (side + 8 if n_over else 0)
    pw = px1 - px0
    top = max([max(hist[k]) for k, _ in series] + list(over.values()) + list(under.values()) + [1])
    X = lambda v: px0 + (v - lo) / (hi - lo) * pw  # noqa: E731
    Y = lambda n: t + ph - n / top * ph  # noqa: E731
    out = [
        f'<svg xmlns="{SVG_NS}" class="chart hist" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        f'aria-label="{esc(title)}">',
        f'<text class="chart-title" x="{left}" y="16" font-size="13" font-weight="600">{esc(title)}</text>',
        legend,
    ]
    if band is not None:
        b0, b1 = X(band[0]), X(band[1])
        out.append(
            f'<rect class="review-band" x="{b0:.1f}" y="{t}" width="{max(b1 - b0, 1):.1f}" height="{ph}" '
            f'fill="{BAND_COLOR}" fill-opacity="0.3" stroke="{BAND_COLOR}" stroke-width="1">'
            f"<title>review band: ok below {band[0]:.4g}, defect above {band[1]:.4g}</title></rect>"
        )
    out += [
        f'<line x1="{left}" y1="{t + ph}" x2="{w - r}" y2="{t + ph}" stroke="#8c959f"/>',
        f'<line x1="{left}" y1="{t}" x2="{left}" y2="{t + ph}" stroke="#8c959f"/>',
    ]
    ticks = np.linspace(lo, hi, 5)
    for j, v in enumerate(ticks):
        anchor = "start" if j == 0 and n_under else ("end" if j == len(ticks) - 1 and n_over else "middle")
        out.append(
            f'<text x="{X(v):.1f}" y="{t + ph + 15}" font-size="10" text-anchor="{anchor}" '
            f'fill="#59636e">{v:.3g}</text>'
        )
    out.append(
        f'<text x="{left - 5}" y="{Y(top) + 4:.1f}" font-size="10" text-anchor="end" fill="#59636e">{top}</text>'
        f'<text x="{left - 5}" y="{t + ph + 4}" font-size="10" text-anchor="end" fill="#59636e">0</text>'
        f'<text x="{px0 + pw / 2}" y="{t + ph + 30}" font-size="11" text-anchor="middle">score</text>'
    )
    for k, col in series:
        for i, n in enumerate(hist[k]):
            if n:
                x0, x1 = X(edges[i]), X(edges[i + 1])
                out.append(
                    f'<rect class="bar-{k}" x="{x0 + 0.5:.1f}" y="{Y(n):.1f}" '
                    f'width="{max(x1 - x0 - 1, 0.5):.1f}" '
                    f'height="{t + ph - Y(n):.1f}" fill="{col}" fill-opacity="0.55"/>'
                )
    for cls, counts, x0, glyph in (("over", over, px1 + 8, "\u00bb"), ("under", under, left, "\u00ab")):
        if not sum(counts.values()):
            continue
        for k, col in series:
            if counts[k]:
                out.append(
                    f'<rect class="bar-{cls} bar-{k}" x="{x0 + 1:.1f}" y="{Y(counts[k]):.1f}" '
                    f'width="{side - 2}" height="{t + ph - Y(counts[k]):.1f}" fill="{col}" fill-opacity="0.55" '
                    f'stroke="{col}" stroke-dasharray="3 2"><title>{counts[k]} {k} {cls} the bins</title>'
                    f"</rect>"
                )
        out.append(
            f'<text x="{x0 + side / 2:.1f}" y="{t + ph + 15}" font-size="11" text-anchor="middle" '
            f'fill="#59636e">{glyph}</text>'
        )
    if thr is not None:
        tx = X(thr)
        out.append(
            f'<line class="threshold" x1="{tx:.1f}" y1="{t - 4}" x2="{tx:.1f}" y2="{t + ph}" stroke="#1f2328" '
            f'stroke-width="1.5" stroke-dasharray="5 3"/>'
            f'<text x="{tx + (4 if tx < px0 + pw * 0.7 else -4):.1f}" '
            f'y="{t + 8}" font-size="10" text-anchor="{"start" if tx < px0 + pw * 0.7 else "end"}" '
            f'paint-order="stroke" stroke="#fff" stroke-width="3">thr {thr:.4g}</text>'
        )
    for j, note in enumerate(notes):
        out.append(
            f'<text class="clip-note" x="{left}" y="{t + ph + 44 + 14 * j}" font-size="10" fill="#59636e">'
            f"{esc(note)}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def svg_reliability(rel: Dict[str, Any], size: Tuple[int, int] = (420, 360)) -> str:
    """A reliability diagram: per confidence bin a bar of the observed defect rate at the bin, the mean confidence
    as a dot (on the diagonal when calibrated) and the count of images under the axis."""
    w, h = size
    left, r, t, b = 52, 16, 14, 62
    pw, ph = w - left - r, h - t - b
    X = lambda v: left + v * pw  # noqa: E731
    Y = lambda v: t + (1 - v) * ph  # noqa: E731
    edges = rel["edges"]
    out = [
        f'<svg xmlns="{SVG_NS}" class="chart reliability" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        f'role="img" aria-label="Reliability of confidence">',
        f'<rect x="{left}" y="{t}" width="{pw}" height="{ph}" fill="#fff" stroke="#8c959f"/>',
    ]
    for v in np.linspace(0, 1, 6):
        out.append(
            f'<line x1="{left}" y1="{Y(v):.1f}" x2="{left + pw}" y2="{Y(v):.1f}" stroke="#eaeef2"/>'
            f'<text x="{X(v):.1f}" y="{t + ph + 17}" font-size="10" text-anchor="middle" '
            f'fill="#59636e">{v:.1f}</text>'
            f'<text x="{left - 6}" y="{Y(v) + 4:.1f}" font-size="10" text-anchor="end" '
            f'fill="#59636e">{v:.1f}</text>'
        )
    out.append(f'<line x1="{X(0)}" y1="{Y(0)}" x2="{X(1)}" y2="{Y(1)}" stroke="#afb8c1" stroke-dasharray="4 4"/>')
    out.append(f'<text x="{left - 6}" y="{t + ph + 33}" font-size="10" text-anchor="end" fill="#59636e">n</text>')
    for i, n in enumerate(rel["count"]):
        cx = X((edges[i] + edges[i + 1]) / 2)
        out.append(
            f'<text class="bin-count" x="{cx:.1f}" y="{t + ph + 33}" font-size="10" text-anchor="middle" '
            f'fill="#59636e">{n}</text>'
        )
        if not n:
            continue
        rate, conf = rel["rate"][i], rel["confidence"][i]
        x0, x1 = X(edges[i]), X(edges[i + 1])
        out.append(
            f'<rect class="bin-rate" x="{x0 + 1:.1f}" y="{Y(rate):.1f}" width="{x1 - x0 - 2:.1f}" '
            f'height="{Y(0) - Y(rate):.1f}" fill="{DEFECT_COLOR}" fill-opacity="0.45"><title>confidence '
            f"{edges[i]:.1f}-{edges[i + 1]:.1f}: {n} images, mean confidence {conf:.3f}, defect rate {rate:.3f}"
            f'</title></rect><circle cx="{X(conf):.1f}" cy="{Y(conf):.1f}" r="3" fill="#1f2328"/>'
        )
    out.append(
        f'<text x="{left + pw / 2}" y="{h - 8}" font-size="12" text-anchor="middle">confidence (binned)</text>'
        f'<text x="14" y="{t + ph / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {t + ph / 2})">observed defect rate</text>'
    )
    out.append("</svg>")
    return "".join(out)
