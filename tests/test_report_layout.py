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
from exdd_scoring.scores import MODES            # every mode, as `offline evaluate` writes them: the widest table

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome",
                                                       "google-chrome-stable")) if p), None)
WIDTHS = (1000, 1200, 1400, 1600)
ROI_BOX = (8, 20, 56, 140)            # the ROI rectangle (x0, y0, x1, y1) of the 64 x 160 images

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
    roi[ROI_BOX[1]:ROI_BOX[3], ROI_BOX[0]:ROI_BOX[2]] = 255
    _png(str(root / "roi.png"), roi)
    train = [_png(str(root / "train" / f"defect_{k}.png"),
                  np.stack([(xx * 3 + k * 40) % 255, yy, np.full_like(yy, 90)], -1).astype(np.uint8)) for k in range(3)]
    images = []
    n_norm, n_def, n_unk = 14, 8, 2
    for i in range(n_norm + n_def + n_unk):
        label = 0 if i < n_norm else (1 if i < n_norm + n_def else -1)
        base = 1.0 + 0.5 * (label == 1) + 0.1 * rng.standard_normal()
        scores = {m: float(base * (1 + 0.2 * j)) for j, m in enumerate(MODES)}
        if i in (3, n_norm + 2):        # the outliers that squeezed every other bar into the first bin
            scores = {m: v * 100 for m, v in scores.items()}
        gray = ((xx + yy + i * 7) % 200 + 30).astype(np.uint8)
        img = _png(str(root / "img" / f"part_{i:02d}.png"), np.stack([gray] * 3, -1))
        hm = _png(str(root / "hm" / f"part_{i:02d}.png"),
                  np.stack([gray, np.full_like(gray, 60), 255 - gray], -1).astype(np.uint8))
        conf = float(np.clip(0.5 + 0.4 * (label == 1) - 0.3 * (label == 0) + 0.1 * rng.standard_normal(), 0, 1))
        im = {"path": img, "label": label, "kind": "scratch" if label == 1 else "", "scores": scores,
              "s_neg": scores["exdd"], "s_pos": 0.5, "heatmap": hm if i % 2 == 0 else None,
              "verdict": "defect" if conf > 0.7 else ("review" if conf > 0.3 else "ok"), "confidence": conf,
              "area": 120 + i, "box": [10, 30 + i, 40, 60 + i],
              "nearest_source": train[i % 3] if label == 1 or i % 4 == 0 else None,
              "nearest_class": ["scratch", "pit", ""][i % 3]}
        images.append(im)
    metrics = {m: {"image_auroc": 0.9 - 0.01 * j, "image_ap": 0.8, "image_f1_max": 0.7, "image_f1_threshold": 1.4,
                   "pixel_auroc": 0.95, "pixel_aupro": 0.6, "pixel_f1_max": 0.4,
                   "at_threshold": {"threshold": 1.3 * (1 + 0.2 * j), "precision": 0.75, "f1": 0.7}}
               for j, m in enumerate(MODES)}
    results = {"version": 1, "source": "offline", "dataset": str(root / "img"), "split": "test",
               "banks": str(root), "weights": "/w/wrn50.safetensors", "default_mode": "dual_bounded",
               "metrics": metrics, "thresholds": {m: metrics[m]["at_threshold"]["threshold"] for m in MODES},
               "images": images, "errors": [],
               "review_band": {"ok_below": 2.1, "defect_above": 2.6}, "roi": str(root / "roi.png")}
    return results, root


@pytest.fixture(scope="module")
def page(layout_results):
    """The report of the generated results and the probe copy of it that measures itself in the browser."""
    results, root = layout_results
    out = write_report(results, str(root / "out" / "report.html"), title="Layout check")
    text = open(out, encoding="utf-8").read()
    probe = root / "out" / "probe.html"
    probe.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    return out, text, str(probe)


def _chromium(args, tmp_path, timeout=60):
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("width", WIDTHS)
def test_no_overflow_or_overlap_in_headless_chromium(page, width, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium binary (./run installs it with apt for the tests)")
    _, _, probe = page
    url = "file://" + os.path.abspath(probe)
    dom = _chromium([f"--window-size={width},1000", "--virtual-time-budget=5000", "--dump-dom", url], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'data-layout="([^"]*)"', dom.stdout)
    assert m, "the probe did not run:\n" + dom.stdout[:500]
    found = json.loads(html.unescape(m.group(1)))
    assert found["innerWidth"] == width
    assert found["labels"] > 50, "the charts' labels were not measured"
    assert found["scrollWidth"] <= found["clientWidth"], f"the page scrolls sideways at {width} px"
    assert found["outside"] == [], f"at {width} px:\n" + "\n".join(found["outside"][:20])
    assert found["overlaps"] == [], f"at {width} px:\n" + "\n".join(found["overlaps"][:20])
    shot = tmp_path / f"report-{width}.png"
    r = _chromium([f"--window-size={width},1800", f"--screenshot={shot}", url], tmp_path)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    px = np.asarray(Image.open(shot).convert("RGB"))
    assert px.shape[:2] == (1800, width)
    assert len(np.unique(px.reshape(-1, 3)[::97], axis=0)) > 50, "screenshot looks blank"
    keep = os.environ.get("EXDD_REPORT_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, os.path.join(keep, shot.name))
