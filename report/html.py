"""One self-contained HTML evaluation report (inline CSS, inline SVG charts, base64 thumbnails): the page.

Split in three: ``report_data`` (numbers from the results), ``report_charts`` (SVG) and this module
(HTML sections, gallery cards, writing); the names of the first two are re-exported here.

Input is the results dict of ``exdd offline evaluate --out`` (the client's evaluation writes the
same keys). The page fetches nothing: a Content-Security-Policy forbids any non-data source.
The data behind the page is written next to it as JSON (same stem, ``.json``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from exdd.fileio import atomic_write, json_safe
from exdd.metrics import confusion

from .charts import BAND_COLOR, svg_histogram, svg_reliability, svg_roc
from .data import (
    DASH,
    confidence_labels,
    esc,
    finite_or_none,
    fmt_metric,
    fmt_score,
    gallery_groups,
    histogram,
    image_counts,
    modes_of,
    ok_images,
    reliability,
    review_band,
    roc_of,
    scores_labels,
)

PALETTE = ("#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2")
THUMB_BOX = (160, 240)  # (max width, max height) of a gallery thumbnail
NEAR_BOX = (120, 240)  # the nearest known defect's source image beside it
ROI_DASH = ((0, 0, 0), (255, 255, 255))  # the ROI outline on a thumbnail: black and white dashes
BOX_COLOR = (255, 214, 0)  # the largest region's box

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
body{margin:0;font:14px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--fg);background:#fff}
main{max-width:1240px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:24px;margin:0 0 2px}
h2{font-size:18px;margin:32px 0 10px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:14px;margin:18px 0 8px;color:var(--muted);font-weight:600}
.sub{color:var(--muted);margin:0 0 16px}
.banner{border-radius:6px;padding:12px 16px;margin:14px 0;font-weight:600}
.banner.danger{background:#ffebe9;border:2px solid #cf222e;color:#82071e;font-size:16px}
.banner .detail{font-weight:400;font-size:13px;margin-top:4px}
.banner.info{background:#fff8c5;border:1px solid #d4a72c;color:#4d2d00}
.meta{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:8px 20px;background:var(--bg);
 border:1px solid var(--line);border-radius:6px;padding:14px 16px}
.meta div{min-width:0}.meta dt{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.meta dd{margin:0;overflow-wrap:anywhere;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
font-size:13px}
table.metrics{border-collapse:collapse}
.table-wrap{overflow-x:auto;max-width:100%}
table.metrics th,table.metrics td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:right}
table.metrics th:first-child,table.metrics td:first-child{text-align:left}
table.metrics thead th{background:var(--bg);border-bottom:2px solid var(--line)}
table.metrics tr.sep td{border-top:2px solid var(--line)}
td.best{font-weight:700;color:#116329}
.tag{display:inline-block;font-size:11px;font-weight:600;padding:0 6px;border-radius:10px;background:#ddf4ff;
color:var(--accent);margin-left:6px;vertical-align:1px}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
.charts{display:flex;flex-wrap:wrap;gap:16px}
/* side by side when both fit, else the ROC under the table; the note wraps to the table's width */
.two{display:flex;flex-wrap:wrap;gap:0 28px;align-items:flex-start}
.two>section{min-width:0;max-width:100%;flex:0 1 auto}
.two>section>.note{contain:inline-size}
.groups{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:4px 24px}
figure{margin:0;border:1px solid var(--line);border-radius:6px;padding:10px;background:#fff}
figcaption{font-size:12px;color:var(--muted);margin-top:4px}
svg text{font-family:-apple-system,"Segoe UI",Roboto,Arial,sans-serif}
.note{color:var(--muted);font-size:13px}
.gallery{display:flex;flex-wrap:wrap;gap:12px}
.card{width:178px;border:1px solid var(--line);border-radius:6px;padding:8px;background:var(--bg);font-size:12px}
.card.pair{width:310px}.thumbs{display:flex;gap:6px}.card .thumb.near{flex:0 0 124px}.card .near img{max-width:120px}
.card .thumb{flex:0 0 160px;height:244px;display:flex;align-items:center;justify-content:center;background:#24292f;
border-radius:4px;overflow:hidden}
.card img{max-width:160px;max-height:240px;display:block}
.card .missing{color:#ffb3b3;padding:8px;text-align:center;font-size:11px;overflow-wrap:anywhere}
.card .name{font-family:ui-monospace,Menlo,Consolas,monospace;margin-top:6px;overflow-wrap:anywhere}
.card .scores{color:var(--muted)}
.verdict{font-weight:700;padding:0 5px;border-radius:3px;color:#fff}
.line{margin-top:2px}.v-ok{background:#1a7f37}.v-review{background:#9a6700}.v-defect{background:#cf222e}
.card .nearest{margin-top:2px;overflow-wrap:anywhere}
.TP{background:#1a7f37}.TN{background:#57606a}.FP{background:#bc4c00}.FN{background:#cf222e}
table.errors{border-collapse:collapse;font-size:12px}
table.errors td{padding:4px 10px;border-bottom:1px solid var(--line);overflow-wrap:anywhere}
footer{margin-top:40px;color:var(--muted);font-size:12px;border-top:1px solid var(--line);padding-top:10px}
"""

LOAD_SCRIPT = """window.addEventListener('load',function(){var a=Array.prototype.slice.call(document.images);
document.body.dataset.imagesTotal=String(a.length);
document.body.dataset.imagesLoaded=String(a.filter(function(i){return i.complete&&i.naturalWidth>0;}).length);});"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


# ----------------------------------------------------------------------------- gallery


def _resolve(path: str, base_dir: Optional[str]) -> str:
    """path as given when it exists, else relative to base_dir."""
    if path and not os.path.isabs(path) and base_dir and not os.path.exists(path):
        return os.path.join(base_dir, path)
    return path


SYNTHETIC_PREFIX = "synthetic:"  # a positive-bank source that is a synthetic defect: synthetic:<folder>/<file>


def source_roots(results: Dict[str, Any], base_dir: Optional[str]) -> List[str]:
    """Where a relative nearest_source (relative to the training dataset's root) may lie: the results' folder, the
    evaluated dataset, and the dataset the banks were built from (their manifest), in that order."""
    roots = [r for r in (base_dir, results.get("dataset")) if isinstance(r, str) and r]
    banks = results.get("banks")
    if isinstance(banks, str) and banks:
        try:
            from exdd_scoring.bank import read_manifest
            from exdd_scoring.provenance import OfflineManifest

            man = read_manifest(_resolve(banks, base_dir), OfflineManifest)  # typed sources (a dict otherwise)
            src = man.sources if isinstance(man, OfflineManifest) else None
            if src is not None and src.dataset:
                roots.append(src.dataset)
        except Exception:  # no readable manifest: the other roots only
            pass
    return roots


def _find_source(path: str, roots: Sequence[str]) -> str:
    """A nearest_source as a file path: synthetic: prefix dropped, tried as given then under each root; as given
    when none exists (the placeholder then says so)."""
    p = path[len(SYNTHETIC_PREFIX) :] if path.startswith(SYNTHETIC_PREFIX) else path
    if os.path.isabs(p) or os.path.exists(p):
        return p
    return next((os.path.join(r, p) for r in roots if os.path.exists(os.path.join(r, p))), p)


def thumbnail_uri(
    path: str,
    box: Tuple[int, int] = THUMB_BOX,
    roi: Optional[np.ndarray] = None,
    region: Optional[Sequence[float]] = None,
) -> str:
    """A data: URI (JPEG) of the image at path, fitted into box = (max width, max height); the ROI mask's outline
    (a bool mask of any size, stretched over the image) in black and white dashes and region = [x0, y0, x1, y1]
    (the image's pixels) as a box, when given."""
    from PIL import Image, ImageDraw

    from exdd.images import read_image
    from exdd.overlay import boundary

    img = Image.fromarray(read_image(path))
    full = img.size
    scale = min(box[0] / img.width, box[1] / img.height, 4.0)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    if size != img.size:
        img = img.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
    if roi is not None:
        m = np.asarray(Image.fromarray(roi.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 127
        px = np.array(img.convert("RGB"))
        yy, xx = np.nonzero(boundary(m))
        dash = ((xx + yy) // 3) % 2
        for k, col in enumerate(ROI_DASH):
            px[yy[dash == k], xx[dash == k]] = col
        img = Image.fromarray(px)
    if region is not None:
        sx, sy = size[0] / full[0], size[1] / full[1]
        x0, y0, x1, y1 = (float(v) for v in region)
        ImageDraw.Draw(img).rectangle(
            [x0 * sx, y0 * sy, max(x1 * sx - 1, x0 * sx), max(y1 * sy - 1, y0 * sy)], outline=BOX_COLOR, width=2
        )
    buf = io.BytesIO()
    # full-resolution colour (4:4:4) where lines are drawn: 4:2:0 would smear the box's thin colour away
    img.save(buf, format="JPEG", quality=88, subsampling=0 if roi is not None or region is not None else -1)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _verdict(label: int, score: float, thr: Optional[float]) -> str:
    """TP / FN / FP / TN of one image, or '' without a label or threshold."""
    if thr is None or label not in (0, 1):
        return ""
    return ("TP" if score >= thr else "FN") if label == 1 else ("FP" if score >= thr else "TN")


def _region(im: Dict[str, Any]) -> Optional[List[float]]:
    """The image's 'box' ([x0, y0, x1, y1] of its largest region, in its pixels) when it is four finite numbers."""
    box = im.get("box")
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return None
    vals = [finite_or_none(v) for v in box]
    return None if any(v is None for v in vals) else vals  # type: ignore[return-value]


def _thumb(path: str, kind: str, box: Tuple[int, int], **marks: Any) -> str:
    """An <img> of a thumbnail, or a placeholder saying why the file could not be shown."""
    try:
        return (
            f'<img src="{thumbnail_uri(path, box, **marks)}" alt="{esc(os.path.basename(path))}" title="{esc(path)}">'
        )
    except Exception as e:  # an unreadable file becomes a placeholder, not a failed report
        return f'<div class="missing">{kind} not available<br>{esc(e)}</div>'


def _card(
    im: Dict[str, Any],
    mode: str,
    modes: Sequence[str],
    thr: Optional[float],
    base_dir: Optional[str],
    roi: Optional[np.ndarray] = None,
    roots: Sequence[str] = (),
) -> str:
    """One gallery card: thumbnail (heatmap when present; the ROI and the largest region's box drawn on it), the
    nearest known defect's source image beside it, name, verdicts and scores."""
    src = im.get("heatmap") or im.get("path", "")
    kind = "heatmap" if im.get("heatmap") else "image"
    thumbs = f'<div class="thumb">{_thumb(_resolve(src, base_dir), kind, THUMB_BOX, roi=roi, region=_region(im))}</div>'
    score = float(im["scores"][mode])
    v = _verdict(int(im.get("label", -1)), score, thr)
    badge = f'<span class="verdict {v}">{v}</span> ' if v else ""
    others = ", ".join(f"{esc(m)} {fmt_score(im['scores'].get(m))}" for m in modes if m != mode and m in im["scores"])
    extra = f" &middot; {esc(im['kind'])}" if im.get("kind") else ""
    line = []
    if im.get("verdict") in ("ok", "review", "defect"):
        line.append(f'<span class="verdict v-{im["verdict"]}">{im["verdict"]}</span>')
    conf = finite_or_none(im.get("confidence"))
    if conf is not None:
        line.append(f"confidence {conf:.2f}")
    area = finite_or_none(im.get("area"))
    if area is not None:
        line.append(f"area {area:.0f} px")
    near = ""
    nsrc, ncls = im.get("nearest_source"), im.get("nearest_class")
    if isinstance(nsrc, str) and nsrc:
        thumbs += (
            f'<div class="thumb near" data-role="nearest">'
            f"{_thumb(_find_source(nsrc, roots), 'nearest defect image', NEAR_BOX)}</div>"
        )
    if (isinstance(nsrc, str) and nsrc) or isinstance(ncls, str) and ncls:
        synth = " (synthetic)" if isinstance(nsrc, str) and nsrc.startswith(SYNTHETIC_PREFIX) else ""
        near = (
            f'<div class="nearest">nearest known defect: <b>{esc(ncls) if ncls else "unnamed class"}</b>'
            f"{' from ' + esc(os.path.basename(nsrc)) + synth if nsrc else ''}</div>"
        )
    pair = " pair" if 'data-role="nearest"' in thumbs else ""
    return (
        f'<div class="card{pair}" data-kind="{kind}"><div class="thumbs">{thumbs}</div>'
        f'<div class="name">{esc(os.path.basename(im.get("path", "")))}</div>'
        f"<div>{badge}<b>{esc(mode)} {fmt_score(score)}</b>{extra}</div>"
        f'<div class="scores">{others}</div>'
        + (f'<div class="line">{" &middot; ".join(line)}</div>' if line else "")
        + f"{near}</div>"
    )


# ----------------------------------------------------------------------------- page sections


def _header(results: Dict[str, Any], title: str, generated: str, counts: Dict[str, int], modes: Sequence[str]) -> str:
    """Title, weights banner and the run's facts."""
    weights, note = str(results.get("weights") or ""), str(results.get("weights_note") or "")
    banner = ""
    if "random" in (weights + " " + note).lower():
        banner = (
            f'<div class="banner danger" id="weights-warning">&#9888; RANDOM-INIT BACKBONE: scores, metrics '
            f'and heatmaps in this report do not reflect real detection quality.<div class="detail">weights '
            f"<code>{esc(weights)}</code>{' &middot; note: ' + esc(note) if note else ''}</div></div>"
        )
    elif note:
        banner = f'<div class="banner info" id="weights-note">Weights note: {esc(note)}</div>'
    thr = results.get("thresholds") or {}
    dm = results.get("default_mode")
    thr_txt = ", ".join(f"{esc(m)} {fmt_score(thr[m])}" for m in modes if m in thr) or DASH
    img_txt = (
        f"{counts['scored']} scored: {counts['defective']} defective, {counts['normal']} normal"
        + (f", {counts['unlabelled']} unlabelled" if counts["unlabelled"] else "")
        + f"; {counts['errors']} unreadable"
    )
    facts = [
        ("Dataset", results.get("dataset")),
        ("Split", results.get("split")),
        ("Banks", results.get("banks")),
        ("Weights", weights or None),
        ("Default mode", dm),
        ("Thresholds", None),
        ("Images", None),
        ("Evaluated", results.get("date") or results.get("evaluated_at")),
        ("Scoring time", f"{results['seconds']} s" if finite_or_none(results.get("seconds")) is not None else None),
        ("Report generated", generated),
    ]
    cells = []
    for k, v in facts:
        if k == "Thresholds":
            cells.append(f"<div><dt>{k}</dt><dd>{thr_txt}</dd></div>")
        elif k == "Images":
            cells.append(f"<div><dt>{k}</dt><dd>{esc(img_txt)}</dd></div>")
        elif v not in (None, ""):
            cells.append(f"<div><dt>{k}</dt><dd>{esc(v)}</dd></div>")
    return (
        f'<header><h1>{esc(title)}</h1><p class="sub">ExDD surface-defect detection &middot; modes side by side'
        f'</p>{banner}<dl class="meta">{"".join(cells)}</dl></header>'
    )


def _metrics_table(results: Dict[str, Any], modes: Sequence[str], at: Dict[str, Dict[str, Any]]) -> str:
    """The metrics of every mode side by side, the best value of each row in bold."""
    metrics = results.get("metrics") or {}
    dm = results.get("default_mode")
    if not modes:
        return '<p class="note">No metrics in the results.</p>'
    head = "".join(
        f'<th><span class="swatch" style="background:{PALETTE[i % len(PALETTE)]}"></span>'
        f"{esc(m).replace('_', '_<wbr>')}"
        f"{'<span class=tag>default</span>' if m == dm else ''}</th>"
        for i, m in enumerate(modes)
    )
    rows = []
    for group, table in ((METRIC_ROWS, {m: metrics.get(m) or {} for m in modes}), (AT_ROWS, at)):
        for j, (key, label, higher) in enumerate(group):
            vals = [finite_or_none((table.get(m) or {}).get(key)) for m in modes]
            if group is AT_ROWS and all(v is None for v in vals):
                continue
            finite = [v for v in vals if v is not None]
            best = (
                (max(finite) if higher else min(finite)) if finite and higher is not None and len(modes) > 1 else None
            )
            fmt = fmt_score if key in ("threshold", "image_f1_threshold") else fmt_metric
            is_best = [v is not None and best is not None and abs(v - best) < 1e-12 for v in vals]
            tds = "".join(f'<td class="{"best" if b else ""}">{fmt(v)}</td>' for v, b in zip(vals, is_best))
            sep = ' class="sep"' if group is AT_ROWS and j == 0 else ""
            rows.append(f'<tr{sep} data-metric="{key}"><td>{label}</td>{tds}</tr>')
    return (
        f'<div class="table-wrap"><table class="metrics" id="metrics"><thead><tr><th>Metric</th>{head}</tr>'
        f'</thead><tbody>{"".join(rows)}</tbody></table></div><p class="note">Bold: best mode per row. '
        f"Pixel AUPRO integrates the per-region overlap up to 30% FPR. A dash means not measured "
        f"(no masks, no labels or a single class).</p>"
    )


def _errors(results: Dict[str, Any]) -> str:
    """A table of unreadable or failed images, or ''."""
    errs = [(e.get("path"), e.get("error")) for e in results.get("errors") or []]
    errs += [(im.get("path"), im.get("error")) for im in results.get("images") or [] if im.get("error")]
    if not errs:
        return ""
    rows = "".join(f"<tr><td>{esc(p)}</td><td>{esc(m)}</td></tr>" for p, m in errs)
    return f'<h2>Unreadable images ({len(errs)})</h2><table class="errors" id="errors"><tbody>{rows}</tbody></table>'


def _roi(results: Dict[str, Any], base_dir: Optional[str]) -> Tuple[Optional[str], Optional[np.ndarray], str]:
    """(path, bool mask, problem) of the ROI: the results' 'roi', else roi.png in the 'banks' folder when there;
    white = inspect. (None, None, '') without one; a file that cannot be read gives its problem, not a failure."""
    path = results.get("roi") if isinstance(results.get("roi"), str) and results.get("roi") else None
    if path is None and isinstance(results.get("banks"), str):
        cand = os.path.join(_resolve(results["banks"], base_dir), "roi.png")
        path = cand if os.path.isfile(cand) else None
    if path is None:
        return None, None, ""
    path = _resolve(path, base_dir)
    try:
        from PIL import Image

        with Image.open(path) as im:  # white (any colour channel lit) = inspect, as exdd_scoring.roi reads it
            a = np.asarray(im.convert("RGB") if im.mode in ("P", "RGBA", "LA", "CMYK", "YCbCr") else im)
        a = a.max(axis=2) if a.ndim == 3 else a
        mask = a > (127 if a.dtype == np.uint8 else 0)
    except Exception as e:  # the gallery goes on without the outline and says why
        return path, None, f"ROI {path} not readable ({e}): not drawn"
    return path, mask, ""


def _calibration(results: Dict[str, Any], data: Dict[str, Any]) -> str:
    """The reliability diagram of the images' 'confidence' against their labels, or '' without confidence."""
    if not any(finite_or_none(im.get("confidence")) is not None for im in ok_images(results)):
        return ""
    conf, y, bad = confidence_labels(results)
    head = "<h2>Confidence calibration</h2>"
    left = (
        f'<p class="note" id="confidence-problem">{bad} confidence{"s" if bad > 1 else ""} outside 0..1 left out.</p>'
        if bad
        else ""
    )
    if conf.size == 0:
        return (
            head + '<p class="note" id="no-reliability">No labelled image has a confidence: calibration not '
            "checked.</p>" + left
        )
    rel = data["reliability"] = reliability(conf, y)
    return (
        f'{head}<div class="charts"><figure id="reliability">{svg_reliability(rel)}<figcaption>Per confidence bin: '
        f"the bar is the share of defective images, the dot the mean confidence<br>(on the dashed diagonal when "
        f"calibrated); n images per bin under the axis. {rel['n']} labelled images,<br>expected calibration error "
        f"{fmt_metric(rel['ece'], 3)}, Brier score {fmt_metric(rel['brier'], 3)}.</figcaption></figure></div>"
        f"{left}"
    )


# ----------------------------------------------------------------------------- the report


def build_report(
    results: Dict[str, Any],
    title: str = "ExDD evaluation report",
    base_dir: Optional[str] = None,
    generated: Optional[str] = None,
    gallery_n: int = 6,
) -> Tuple[str, Dict[str, Any]]:
    """The report page as an HTML string and the data behind it (JSON-safe)."""
    generated = generated or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    modes = modes_of(results)
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(modes)}
    thresholds = {m: finite_or_none(v) for m, v in (results.get("thresholds") or {}).items()}
    counts = image_counts(results)
    data: Dict[str, Any] = {
        "title": title,
        "generated": generated,
        "modes": modes,
        "counts": counts,
        "roc": {},
        "histograms": {},
        "at_threshold": {},
        "gallery": {},
    }
    band, band_problem = review_band(results)
    rb = results.get("review_band")
    band_mode = (rb.get("mode") if isinstance(rb, dict) else None) or results.get("default_mode")
    if band is not None:
        data["review_band"] = {"ok_below": band[0], "defect_above": band[1], "mode": band_mode}
    at: Dict[str, Dict[str, Any]] = {}
    for m in modes:
        given = dict(((results.get("metrics") or {}).get(m) or {}).get("at_threshold") or {})
        s, y = scores_labels(results, m)
        thr = thresholds.get(m, finite_or_none(given.get("threshold")))
        if thr is not None and s.size and y.min() != y.max():
            mine = confusion(s, y, thr)
            given.setdefault("accuracy", mine["accuracy"])
            given.setdefault("tpr", mine["tpr"])
            given.setdefault("fpr", mine["fpr"])
        if thr is not None:
            given.setdefault("threshold", thr)
        at[m] = given
        curve = roc_of(s, y)
        if curve is not None:
            from exdd.metrics import auroc

            op = (finite_or_none(given.get("fpr")), finite_or_none(given.get("tpr")))
            data["roc"][m] = {
                "fpr": curve[0].tolist(),
                "tpr": curve[1].tolist(),
                "auroc": auroc(s, y),
                "operating_point": op if thr is not None else None,
            }
        sa, ya = scores_labels(results, m, labelled_only=False)
        if sa.size:
            data["histograms"][m] = histogram(sa, ya, thr, marks=band if band is not None and m == band_mode else ())
    data["at_threshold"] = at
    if band is not None and band_mode not in data["histograms"]:
        band, band_problem = None, f"review_band not drawn: no scores of its mode {band_mode!r}"
        data.pop("review_band", None)

    if data["roc"]:
        roc = (
            f"<figure>{svg_roc(data['roc'], colors)}<figcaption>Image-level ROC per mode from the per-image "
            f"scores;<br>dots mark each mode's calibrated threshold.</figcaption></figure>"
        )
    else:
        roc = '<p class="note" id="no-roc">No ROC: it needs images labelled both normal and defective.</p>'
    parts = [
        _header(results, title, generated, counts, modes),
        f'<div class="two"><section><h2>Metrics</h2>{_metrics_table(results, modes, at)}</section>'
        f"<section><h2>ROC curves</h2>{roc}</section></div>",
    ]
    parts.append("<h2>Score distributions</h2>")
    if data["histograms"]:

        def hist_title(m: str) -> str:
            return m + (" (default)" if m == results.get("default_mode") else "")

        figs = "".join(
            f"<figure>{svg_histogram(h, thresholds.get(m), hist_title(m), band=band if m == band_mode else None)}"
            f"</figure>"
            for m, h in data["histograms"].items()
        )
        said = (
            f' The <span class="swatch" style="background:{BAND_COLOR}"></span>shaded band on {esc(band_mode)} is '
            f"the review band: scores from {band[0]:.4g} to {band[1]:.4g} go to a person."
            if band is not None
            else ""
        )
        if any(sum(h["over"].values()) + sum(h["under"].values()) for h in data["histograms"].values()):
            said = (
                " A few scores far beyond the others are counted in a bar apart (&raquo; above, &laquo; below), "
                "as said under the chart." + said
            )
        parts.append(
            f'<div class="charts">{figs}</div><p class="note">Normal vs defective image scores per mode; '
            f"the dashed line is the calibrated threshold (score &ge; threshold is flagged).{said}</p>"
        )
    else:
        parts.append('<p class="note">No scored images.</p>')
    if band_problem:
        parts.append(f'<p class="note" id="band-problem">{esc(band_problem)}</p>')
    parts.append(_calibration(results, data))
    gm = results.get("default_mode") if results.get("default_mode") in modes else (modes[0] if modes else None)
    if gm is not None and ok_images(results):
        parts.append(f'<h2>Gallery <span class="tag">by {esc(gm)} score</span></h2>')
        roi_path, roi, roi_problem = _roi(results, base_dir)
        if roi_path is not None:
            data["roi"] = roi_path
        if any(im.get("heatmap") for im in ok_images(results)):
            from exdd.overlay import GT_COLOR, PRED_COLOR

            rgb = lambda c: "rgb(%d,%d,%d)" % c  # noqa: E731
            parts.append(
                f'<p class="note">Heatmaps: anomaly map in a blue-to-red colour scale over the image; '
                f'<span class="swatch" style="background:{rgb(PRED_COLOR)};border:1px solid #8c959f"></span>'
                f'predicted defect contour, <span class="swatch" style="background:{rgb(GT_COLOR)}"></span>'
                f"ground-truth contour.</p>"
            )
        marks = (
            ["black-and-white dashes: the region of interest (outside it nothing is inspected)"]
            if roi is not None
            else []
        )
        if any(_region(im) for im in ok_images(results)):
            marks.append(f'<span class="swatch" style="background:rgb{BOX_COLOR}"></span>box of the largest region')
        if marks:
            parts.append(f'<p class="note" id="roi-note">On the thumbnails: {"; ".join(marks)}.</p>')
        if roi_problem:
            parts.append(f'<p class="note" id="roi-problem">{esc(roi_problem)}</p>')
        groups = []
        roots = source_roots(results, base_dir) if any(im.get("nearest_source") for im in ok_images(results)) else []
        for gtitle, imgs in gallery_groups(results, gm, gallery_n):
            data["gallery"][gtitle] = [im.get("path") for im in imgs]
            if imgs:
                cards = "".join(_card(im, gm, modes, thresholds.get(gm), base_dir, roi, roots) for im in imgs)
                groups.append(f'<section><h3>{esc(gtitle)}</h3><div class="gallery">{cards}</div></section>')
        parts.append(f'<div class="groups">{"".join(groups)}</div>')
    parts.append(_errors(results))
    parts.append(
        f"<footer>Generated by exdd on {esc(generated)}. Self-contained: every image is embedded, "
        f"nothing is fetched.</footer>"
    )
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>{''.join(parts)}</main>"
        f"<script>{LOAD_SCRIPT}</script></body></html>"
    )
    return page, json_safe(data)


def json_path_of(out_html: str) -> str:
    """Where the JSON behind a report goes: next to it, same stem ('report.html' -> 'report.json')."""
    return os.path.splitext(out_html)[0] + ".json"


def write_report(
    results: Dict[str, Any],
    out_html: str,
    title: str = "ExDD evaluation report",
    base_dir: Optional[str] = None,
    gallery_n: int = 6,
) -> str:
    """Write the self-contained HTML report and its JSON (results + chart data) and return the HTML path."""
    folder = os.path.dirname(os.path.abspath(out_html))
    os.makedirs(folder, exist_ok=True)
    page, data = build_report(results, title, base_dir, gallery_n=gallery_n)
    out_json = json_path_of(out_html)
    atomic_write(out_json, json.dumps({**json_safe(results), "report": data}, indent=1, allow_nan=False))
    atomic_write(out_html, page)
    return out_html
