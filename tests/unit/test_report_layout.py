"""The report as a line operator reads it (issue 27): histograms readable whatever the outliers, no clipped table
or overlapping labels at 1000-1600 px (measured in a real headless Chromium), the review band, the ROI, the
reliability of `confidence` and the nearest known defect beside each heatmap.

The results here are generated (small PNGs, a few dozen scores with two huge outliers) so that the module runs in
seconds; tests/test_report.py covers the report of a real build + evaluate.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from exdd.report.data import histogram
from exdd.report.html import build_report, write_report
from exdd_scoring.scores import MODES  # every mode, as `offline evaluate` writes them: the widest table

CHROMIUM = next(
    (
        p
        for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"))
        if p
    ),
    None,
)
WIDTHS = (1000, 1200, 1400, 1600)
SHOT_WIDTH = 1400  # the width of the report; one screenshot keeps the module fast
ROI_BOX = (8, 20, 56, 140)  # the ROI rectangle (x0, y0, x1, y1) of the 64 x 160 images

# The page measures itself once loaded: every element inside its parent, no two neighbours (sections side by side,
# charts, cards) overlapping, every chart label inside its chart and no two chart labels overlapping. The findings
# go into the DOM (body[data-layout]), read back with --dump-dom.
PROBE = r"""<script>
window.addEventListener('load', function () { setTimeout(function () {
  var out = {innerWidth: window.innerWidth, scrollWidth: document.documentElement.scrollWidth,
             clientWidth: document.documentElement.clientWidth, outside: [], overlaps: [], labels: 0};
  function name(e) { return e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
                            (e.getAttribute('class') ? '.' + e.getAttribute('class').split(' ').join('.') : ''); }
  function hit(a, b) { return Math.min(a.right, b.right) - Math.max(a.left, b.left) > 0.5 &&
                              Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 0.5; }
  var all = document.querySelectorAll('main *');
  for (var i = 0; i < all.length; i++) {
    var e = all[i], p = e.parentElement;
    if (e.closest('svg') && e.tagName.toLowerCase() !== 'svg') continue;
    var r = e.getBoundingClientRect(), q = p.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if (r.left < q.left - 1 || r.right > q.right + 1)
      out.outside.push(name(e) + ' [' + Math.round(r.left) + ',' + Math.round(r.right) + '] in ' + name(p) +
                       ' [' + Math.round(q.left) + ',' + Math.round(q.right) + ']');
    if (e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX !== 'visible')
      out.outside.push(name(e) + ' scrolls or clips (' + e.scrollWidth + ' > ' + e.clientWidth + ')');
  }
  document.querySelectorAll('main *').forEach(function (p) {
    if (p.closest('svg')) return;
    var kids = Array.prototype.filter.call(p.children, function (c) {
      var s = getComputedStyle(c); return s.position !== 'absolute' && s.display !== 'inline'; });
    for (var a = 0; a < kids.length; a++) for (var b = a + 1; b < kids.length; b++)
      if (hit(kids[a].getBoundingClientRect(), kids[b].getBoundingClientRect()))
        out.overlaps.push(name(kids[a]) + ' overlaps ' + name(kids[b]));
  });
  document.querySelectorAll('main svg').forEach(function (svg) {
    var box = svg.getBoundingClientRect(), ts = svg.querySelectorAll('text'), rs = [];
    var where = (svg.getAttribute('aria-label') || name(svg));
    for (var i = 0; i < ts.length; i++) {
      var r = ts[i].getBoundingClientRect(); rs.push(r); out.labels++;
      if (r.left < box.left - 0.5 || r.right > box.right + 0.5 || r.top < box.top - 0.5 || r.bottom > box.bottom + 0.5)
        out.outside.push('label "' + ts[i].textContent + '" outside its chart ' + where);
    }
    for (var a = 0; a < rs.length; a++) for (var b = a + 1; b < rs.length; b++)
      if (hit(rs[a], rs[b]))
        out.overlaps.push('label "' + ts[a].textContent + '" overlaps "' + ts[b].textContent + '" in ' + where);
  });
  document.body.setAttribute('data-layout', JSON.stringify(out));
}, 0); });
</script>"""


def _png(path: str, arr: np.ndarray) -> str:
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def layout_results(tmp_path_factory):
    """(results dict, folder): four modes (a wide metrics table), long mode names beside a three-series legend,
    two scores a hundred times the others, and every optional field of issue 27 (verdict, confidence, area, box,
    nearest_source, nearest_class per image; review_band and roi for the results)."""
    root = tmp_path_factory.mktemp("layout")
    rng = np.random.default_rng(27)
    yy, xx = np.mgrid[0:160, 0:64]
    for sub in ("img", "hm", "train"):
        (root / sub).mkdir()
    roi = np.zeros((160, 64), np.uint8)
    roi[ROI_BOX[1] : ROI_BOX[3], ROI_BOX[0] : ROI_BOX[2]] = 255
    _png(str(root / "roi.png"), roi)
    train = [
        _png(
            str(root / "train" / f"defect_{k}.png"),
            np.stack([(xx * 3 + k * 40) % 255, yy, np.full_like(yy, 90)], -1).astype(np.uint8),
        )
        for k in range(3)
    ]
    images = []
    n_norm, n_def, n_unk = 14, 8, 2
    for i in range(n_norm + n_def + n_unk):
        label = 0 if i < n_norm else (1 if i < n_norm + n_def else -1)
        base = 1.0 + 0.5 * (label == 1) + 0.1 * rng.standard_normal()
        scores = {m: float(base * (1 + 0.2 * j)) for j, m in enumerate(MODES)}
        if i in (3, n_norm + 2):  # the outliers that squeezed every other bar into the first bin
            scores = {m: v * 100 for m, v in scores.items()}
        gray = ((xx + yy + i * 7) % 200 + 30).astype(np.uint8)
        img = _png(str(root / "img" / f"part_{i:02d}.png"), np.stack([gray] * 3, -1))
        hm = _png(
            str(root / "hm" / f"part_{i:02d}.png"),
            np.stack([gray, np.full_like(gray, 60), 255 - gray], -1).astype(np.uint8),
        )
        conf = float(np.clip(0.5 + 0.4 * (label == 1) - 0.3 * (label == 0) + 0.1 * rng.standard_normal(), 0, 1))
        im = {
            "path": img,
            "label": label,
            "kind": "scratch" if label == 1 else "",
            "scores": scores,
            "s_neg": scores["exdd"],
            "s_pos": 0.5,
            "heatmap": hm if i % 2 == 0 else None,
            "verdict": "defect" if conf > 0.7 else ("review" if conf > 0.3 else "ok"),
            "confidence": conf,
            "area": 120 + i,
            "box": [10, 30 + i, 40, 60 + i],
            "nearest_source": train[i % 3] if label == 1 or i % 4 == 0 else None,
            "nearest_class": ["scratch", "pit", ""][i % 3],
        }
        images.append(im)
    metrics = {
        m: {
            "image_auroc": 0.9 - 0.01 * j,
            "image_ap": 0.8,
            "image_f1_max": 0.7,
            "image_f1_threshold": 1.4,
            "pixel_auroc": 0.95,
            "pixel_aupro": 0.6,
            "pixel_f1_max": 0.4,
            "at_threshold": {"threshold": 1.3 * (1 + 0.2 * j), "precision": 0.75, "f1": 0.7},
        }
        for j, m in enumerate(MODES)
    }
    results = {
        "version": 1,
        "source": "offline",
        "dataset": str(root / "img"),
        "split": "test",
        "banks": str(root),
        "weights": "/w/wrn50.safetensors",
        "default_mode": "dual_bounded",
        "metrics": metrics,
        "thresholds": {m: metrics[m]["at_threshold"]["threshold"] for m in MODES},
        "images": images,
        "errors": [],
        "review_band": {"ok_below": 2.1, "defect_above": 2.6},
        "roi": str(root / "roi.png"),
    }
    return results, root


def _write_pages(results, folder):
    """(report path, its text, the probe copy's path) of results written into folder."""
    out = write_report(results, str(folder / "report.html"), title="Layout check")
    text = open(out, encoding="utf-8").read()
    probe = folder / "probe.html"
    probe.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    return out, text, str(probe)


@pytest.fixture(scope="module")
def page(layout_results):
    """The report of the generated results (every mode) and the probe copy of it that measures itself."""
    results, root = layout_results
    return _write_pages(results, root / "out")


@pytest.fixture(scope="module")
def page_two_modes(layout_results):
    """The same with two modes only: a narrow table, the ROC beside it where both fit."""
    results, root = layout_results
    two = ("patchcore", "exdd")
    sub = {
        **results,
        "default_mode": "exdd",
        "metrics": {m: results["metrics"][m] for m in two},
        "thresholds": {m: results["thresholds"][m] for m in two},
        "review_band": {"ok_below": 1.4, "defect_above": 1.75},
        "images": [{**im, "scores": {m: im["scores"][m] for m in two}} for im in results["images"]],
    }
    return _write_pages(sub, root / "out-two")


def _chromium(args, tmp_path, timeout=60):
    base = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("which,width", [("all modes", w) for w in WIDTHS] + [("two modes", 1000), ("two modes", 1400)])
def test_no_overflow_or_overlap_in_headless_chromium(which, width, request, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium binary (./run installs it with apt for the tests)")
    _, _, probe = request.getfixturevalue("page" if which == "all modes" else "page_two_modes")
    url = "file://" + os.path.abspath(probe)
    dom = _chromium([f"--window-size={width},1000", "--virtual-time-budget=5000", "--dump-dom", url], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'data-layout="([^"]*)"', dom.stdout)
    assert m, "the probe did not run:\n" + dom.stdout[:500]
    found = json.loads(html.unescape(m.group(1)))
    assert found["innerWidth"] == width
    assert found["labels"] > 30, "the charts' labels were not measured"
    assert found["scrollWidth"] <= found["clientWidth"], f"the page scrolls sideways at {width} px"
    assert found["outside"] == [], f"at {width} px:\n" + "\n".join(found["outside"][:20])
    assert found["overlaps"] == [], f"at {width} px:\n" + "\n".join(found["overlaps"][:20])
    if width != SHOT_WIDTH or which != "all modes":
        return
    shot = tmp_path / f"report-{width}.png"
    r = _chromium([f"--window-size={width},1800", f"--screenshot={shot}", url], tmp_path)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    px = np.asarray(Image.open(shot).convert("RGB"))
    assert px.shape[:2] == (1800, width)
    assert len(np.unique(px.reshape(-1, 3)[::97], axis=0)) > 50, "screenshot looks blank"
    keep = os.environ.get("EXDD_REPORT_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, os.path.join(keep, shot.name))


def _svg_of(text: str, title: str) -> str:
    """The histogram svg titled title in the page."""
    m = re.search(r'<svg[^>]*class="chart hist"[^>]*aria-label="' + re.escape(title) + r'".*?</svg>', text)
    assert m, f"no histogram {title}"
    return m.group(0)


def test_histogram_keeps_the_bulk_readable_whatever_the_outliers():
    rng = np.random.default_rng(3)
    s = np.r_[rng.normal(1.0, 0.1, 14), rng.normal(1.5, 0.1, 8), 100.0, 150.0, -400.0]
    y = np.r_[[0] * 14, [1] * 8, 0, 1, -1]
    h = histogram(s, y, 1.3, marks=(1.2, 1.4))
    assert h["edges"][-1] < 3 and h["edges"][0] > 0  # the bins span the bulk, not the outliers
    assert sum(np.count_nonzero(h[k]) for k in ("normal", "defective")) >= 10, "the bulk still in a few bins"
    assert h["over"] == {"normal": 1, "defective": 1, "unknown": 0}
    assert h["under"] == {"normal": 0, "defective": 0, "unknown": 1}
    for k, n in (("normal", 15), ("defective", 9), ("unknown", 1)):  # every score counted once
        assert sum(h[k]) + h["over"][k] + h["under"][k] == n
    assert (h["min"], h["max"]) == (-400.0, 150.0)
    # a defect class well apart from the normal one is no outlier: nothing clipped
    s2 = np.r_[rng.normal(1.0, 0.1, 40), rng.normal(10.0, 1.0, 6)]
    h2 = histogram(s2, np.r_[[0] * 40, [1] * 6], 5.0)
    assert sum(h2["over"].values()) == sum(h2["under"].values()) == 0
    assert h2["edges"][0] < s2.min() and h2["edges"][-1] > s2.max()
    # the threshold and the band stay inside the bins even far from every score
    h3 = histogram(s, y, 40.0, marks=(-3.0, 41.0))
    assert h3["edges"][0] < -3.0 and h3["edges"][-1] > 41.0 and h3["over"]["defective"] == 1


def test_histogram_chart_says_what_it_leaves_out(page, layout_results):
    _, text, _ = page
    results, _ = layout_results
    svg = _svg_of(text, "exdd")
    top = max(im["scores"]["exdd"] for im in results["images"])
    assert re.search(r"\u00bb bar: 2 scores above [0-9.]+ \(max " + f"{top:.3g}" + r"\)", svg), svg[-600:]
    assert svg.count('class="bar-over') == 2  # one normal, one defective, in the bar apart
    assert text.count('class="chart hist"') == len(MODES) and text.count('class="chart-title"') == len(MODES)


def test_review_band_is_shaded_on_its_mode_around_the_threshold(page, layout_results):
    _, text, _ = page
    results, _ = layout_results
    assert text.count('class="review-band"') == 1
    svg = _svg_of(text, "dual_bounded (default)")
    band = re.search(r'class="review-band" x="([0-9.]+)" y="[0-9.]+" width="([0-9.]+)"', svg)
    thr_x = float(re.search(r'class="threshold" x1="([0-9.]+)"', svg).group(1))
    x0, bw = float(band.group(1)), float(band.group(2))
    t1, t2 = results["review_band"]["ok_below"], results["review_band"]["defect_above"]
    thr = results["thresholds"]["dual_bounded"]
    assert t1 < thr < t2
    # the threshold line sits inside the band where it sits between ok_below and defect_above
    frac = (thr_x - x0) / bw
    assert frac == pytest.approx((thr - t1) / (t2 - t1), abs=0.02)
    assert "review 2.1\u20132.6" in svg


def test_reliability_diagram_bins_confidence_against_the_labels(page, layout_results):
    from exdd.report.data import reliability

    rel = reliability(np.array([0.05, 0.1, 0.55, 0.95, 1.0, 0.5]), np.array([0, 0, 1, 1, 1, 0]), bins=10)
    assert rel["count"] == [1, 1, 0, 0, 0, 2, 0, 0, 0, 2]
    assert rel["rate"][5] == 0.5 and rel["confidence"][5] == pytest.approx(0.525, abs=1e-12)
    assert rel["rate"][2] is None and rel["rate"][9] == 1.0
    ece = (1 * 0.05 + 1 * 0.1 + 2 * abs(0.5 - 0.525) + 2 * abs(1 - 0.975)) / 6
    assert rel["ece"] == pytest.approx(ece, abs=1e-12)
    assert rel["brier"] == pytest.approx(np.mean(np.array([0.05, 0.1, 0.45, 0.05, 0.0, 0.5]) ** 2), abs=1e-12)
    _, text, _ = page
    results, _ = layout_results
    fig = re.search(r'<figure id="reliability">.*?</figure>', text).group(0)
    counts = [int(n) for n in re.findall(r'class="bin-count"[^>]*>(\d+)<', fig)]
    labelled = [im for im in results["images"] if im["label"] in (0, 1)]
    assert len(counts) == 10 and sum(counts) == len(labelled)
    assert "expected calibration error" in fig


def _thumb_rgb(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")).astype(int)


def test_gallery_draws_the_roi_and_the_box_and_shows_the_nearest_defect(page, layout_results):
    from exdd.report.html import BOX_COLOR, thumbnail_uri

    results, root = layout_results
    hm = next(im for im in results["images"] if im["heatmap"])["heatmap"]
    roi = np.asarray(Image.open(root / "roi.png")) > 127
    plain = _thumb_rgb(thumbnail_uri(hm))
    marked = _thumb_rgb(thumbnail_uri(hm, roi=roi, region=[10, 30, 40, 60]))
    assert plain.shape == marked.shape == (240, 96, 3)  # 64 x 160 fitted into 160 x 240: scale 1.5
    col = marked[ROI_BOX[1] * 3 // 2 + 4 : ROI_BOX[3] * 3 // 2 - 4, ROI_BOX[0] * 3 // 2]  # the ROI's left edge
    grey = np.abs(col - col.mean(axis=1, keepdims=True)).max(axis=1) < 40
    assert grey.mean() > 0.9 and (col.mean(axis=1) < 80).any() and (col.mean(axis=1) > 180).any()
    assert np.abs(plain[ROI_BOX[1] * 3 // 2 + 4 : ROI_BOX[3] * 3 // 2 - 4, ROI_BOX[0] * 3 // 2] - col).mean() > 40
    far = lambda px: np.abs(px[45:47, 18:57] - np.array(BOX_COLOR)).max(axis=2).mean()  # noqa: E731
    assert far(marked) < 70 < far(plain)  # the box's top edge, y = 30 * 1.5, x 15..60
    _, text, _ = page
    shown = set(re.findall(r'<div class="name">([^<]+)</div>', text))
    with_near = [im for im in results["images"] if os.path.basename(im["path"]) in shown and im["nearest_source"]]
    assert with_near and text.count('data-role="nearest"') == len(with_near) == text.count('class="card pair"')
    assert "nearest known defect: <b>scratch</b>" in text and 'id="roi-note"' in text
    assert re.search(r'class="verdict v-(ok|review|defect)"', text) and "confidence 0." in text and " px</div>" in text


def test_results_without_the_new_fields_look_as_before(layout_results, tmp_path):
    results, _ = layout_results
    old = {k: v for k, v in results.items() if k not in ("review_band", "roi", "banks")}
    keys = ("verdict", "confidence", "area", "box", "nearest_source", "nearest_class")
    old["images"] = [{k: v for k, v in im.items() if k not in keys} for im in results["images"]]
    page_old, data = build_report(old)
    for absent in (
        'class="review-band"',
        "Confidence calibration",
        'data-role="nearest"',
        'id="roi-note"',
        'class="line"',
        "nearest known defect",
        "-problem",
    ):
        assert absent not in page_old, absent
    assert "review_band" not in data and "reliability" not in data and "roi" not in data
    # the ROI is found in the bank folder when the results only name the banks
    _, data = build_report({**old, "banks": results["banks"]})
    assert data["roi"] == results["roi"]


def test_bad_optional_fields_are_said_not_drawn(layout_results, tmp_path):
    results, _ = layout_results
    bad_roi = tmp_path / "roi.png"
    bad_roi.write_bytes(b"not a png")
    imgs = [{**im, "confidence": 7.0} if i == 0 else im for i, im in enumerate(results["images"])]
    page_bad, data = build_report(
        {**results, "review_band": {"ok_below": 3, "defect_above": 1}, "roi": str(bad_roi), "images": imgs}
    )
    assert 'id="band-problem"' in page_bad and "ok_below &lt;= defect_above" in page_bad
    assert 'class="review-band"' not in page_bad and "review_band" not in data
    assert 'id="roi-problem"' in page_bad and "roi.png" in page_bad
    assert 'id="confidence-problem"' in page_bad and data["reliability"]["n"] == 21
    page_bad, _ = build_report({**results, "review_band": [1, 2]})
    assert 'id="band-problem"' in page_bad
    page_bad, _ = build_report({**results, "review_band": {**results["review_band"], "mode": "nope"}})
    assert "no scores of its mode 'nope'" in html.unescape(page_bad)


def test_report_cli_draws_the_results_level_fields(layout_results, tmp_path):
    """Through `exdd report` (the results file validated by exdd.results): the review band and the ROI, which live at
    the results' top level, reach the page."""
    from click.testing import CliRunner

    from exdd.report.cli import report as report_cmd

    results, _ = layout_results
    src = tmp_path / "results.json"
    src.write_text(json.dumps(results))
    out = tmp_path / "page.html"
    r = CliRunner().invoke(report_cmd, [str(src), "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert text.count('class="review-band"') == 1 and 'id="roi-note"' in text


def test_nearest_source_relative_to_the_dataset_root_and_synthetic(layout_results):
    """nearest_source as the bank stores it: relative to the training dataset's root, or synthetic:<folder>/<file>."""
    results, root = layout_results
    imgs = [im for im in results["images"] if im["label"] == 1][:2]
    rel = [
        {**imgs[0], "nearest_source": "train/defect_0.png"},
        {**imgs[1], "nearest_source": "synthetic:train/defect_1.png", "nearest_class": ""},
    ]
    base = {**results, "images": rel, "dataset": str(root)}
    page_rel, _ = build_report(base, gallery_n=2)
    assert page_rel.count('data-role="nearest"><img ') == 2, "a nearest source was not found"
    assert "from defect_1.png (synthetic)" in page_rel
    page_gone, _ = build_report({**base, "dataset": "/nowhere"}, gallery_n=2)
    assert page_gone.count('data-role="nearest"><div class="missing">nearest defect image not available') == 2
