"""The HTML report built from a real build/evaluate run, checked in a real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from exdd.fileio import json_safe
from exdd.report.data import gallery_groups, histogram, modes_of
from exdd.report.html import build_report, write_report

SVG_XMLNS = 'xmlns="http://www.w3.org/2000/svg"'
CHROMIUM = next(
    (
        p
        for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"))
        if p
    ),
    None,
)


def _heatmaps(dataset: str, bank_dir: str, out_dir: str, mode: str) -> dict:
    """Real anomaly maps of the test split as overlay PNGs, {image path: png path}."""
    from exdd.datasets import load_split
    from exdd.images import read_image, read_mask
    from exdd.offline.evaluate import score_split
    from exdd.offline.features import build_extractor
    from exdd.overlay import overlay, save_png
    from exdd_scoring import Scorer, load_banks, map_of_mode, read_manifest_features

    feats = read_manifest_features(bank_dir)
    model, info = build_extractor(feats["weights"], feats["d"], feats["projection_seed"], tuple(feats["input_size"]))
    scorer = Scorer(load_banks(bank_dir, expected_features=info))
    scored = score_split(load_split(dataset, "test"), model, scorer, tuple(info["input_size"]), 8, True)
    maps = scored.maps[map_of_mode(mode)].astype(np.float32)
    vmin, vmax = float(np.percentile(maps, 1)), float(np.percentile(maps, 99.5))
    out = {}
    for i, s in enumerate(scored.samples):
        img = read_image(s.path)
        gt = read_mask(s.mask, img.shape[:2]) if s.mask else None
        png = os.path.join(out_dir, os.path.basename(s.path))
        out[s.path] = save_png(png, overlay(img, maps[i], vmin, vmax, (vmin + vmax) / 2, gt))
    return out


@pytest.fixture(scope="module")
def real_results(tiny_dataset, tiny_banks, tmp_path_factory):
    """(results dict, work dir) from a real evaluate of the tiny world's banks, with heatmaps on half the images."""
    from exdd.cli import main

    root = tmp_path_factory.mktemp("report")
    data, banks, res = str(tiny_dataset), str(tiny_banks), str(root / "results.json")
    r = CliRunner().invoke(main, ["offline", "evaluate", data, "--banks", banks, "--out", res])
    assert r.exit_code == 0, r.output
    with open(res) as f:
        results = json.load(f)
    hm = _heatmaps(data, banks, str(root / "heatmaps"), results["default_mode"])
    for i, im in enumerate(results["images"]):
        if i % 2 == 0 and im["path"] in hm:
            im["heatmap"] = hm[im["path"]]
    return results, root


@pytest.fixture(scope="module")
def report(real_results):
    """The report written from the real results: (html path, html text, results)."""
    results, root = real_results
    out = write_report(results, str(root / "out" / "report.html"), title="Tiny surfaces")
    with open(out, encoding="utf-8") as f:
        return out, f.read(), results


def _chromium(args, tmp_path, timeout=60):
    """Run headless Chromium with a throwaway profile; the completed process."""
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
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=timeout)


def test_report_is_self_contained(report):
    path, text, results = report
    assert text.startswith("<!DOCTYPE html>")
    stripped = text.replace(SVG_XMLNS, "")
    assert "http://" not in stripped and "https://" not in stripped
    assert not re.search(r'\b(src|href)="(?!data:)', text), "every src/href must be a data: URI"
    assert "Content-Security-Policy" in text
    # the data behind it: strict JSON next to the page, results plus the chart data
    with open(os.path.join(os.path.dirname(path), "report.json")) as f:
        data = json.loads(f.read(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert data["dataset"] == results["dataset"] and len(data["images"]) == len(results["images"])
    assert set(data["report"]["roc"]) == set(results["metrics"])
    assert data["report"]["counts"]["defective"] == sum(im["label"] == 1 for im in results["images"])


def test_report_content(report):
    _, text, results = report
    assert 'id="weights-warning"' in text and "RANDOM-INIT" in text  # random:0 weights are flagged
    assert text.count('class="roc-curve"') == len(results["metrics"])
    assert text.count('class="chart hist"') == len(results["metrics"])
    assert text.count('class="threshold"') == len(results["thresholds"])
    for m, v in results["metrics"].items():
        assert f"{v['image_auroc']:.4f}" in text and f"{v['pixel_aupro']:.4f}" in text
    # accuracy at the calibrated threshold, recomputed from the per-image scores
    dm = results["default_mode"]
    ok = [im for im in results["images"] if im["label"] in (0, 1)]
    acc = np.mean([(im["scores"][dm] >= results["thresholds"][dm]) == (im["label"] == 1) for im in ok])
    row = re.search(r'data-metric="accuracy">(.*?)</tr>', text).group(1)
    assert f"{acc:.4f}" in row
    assert text.count('data-kind="heatmap"') >= 1 and text.count('data-kind="image"') >= 1


def test_report_in_headless_chromium(report, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    path, text, results = report
    n_img = text.count("<img ")
    assert n_img >= len(results["images"])  # at least one picture per test image of the tiny world
    url = "file://" + os.path.abspath(path)
    dom = _chromium(["--virtual-time-budget=5000", "--dump-dom", url], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'data-images-loaded="(\d+)"', dom.stdout)
    assert m, "the load handler did not run:\n" + dom.stdout[:500]
    assert int(m.group(1)) == n_img
    assert re.search(r'data-images-total="(\d+)"', dom.stdout).group(1) == str(n_img)
    assert 'id="metrics"' in dom.stdout and "<svg" in dom.stdout
    shot = tmp_path / "report.png"
    r = _chromium(["--hide-scrollbars", f"--screenshot={shot}", "--window-size=1280,2000", url], tmp_path)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    from PIL import Image

    px = np.asarray(Image.open(shot).convert("RGB"))
    assert px.shape[:2] == (2000, 1280)
    assert len(np.unique(px.reshape(-1, 3)[::97], axis=0)) > 50, "screenshot looks blank"
    keep = os.environ.get("EXDD_REPORT_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_report_cli(real_results, tmp_path):
    from exdd.report.cli import report as report_cmd

    results, root = real_results
    src = tmp_path / "results.json"
    src.write_text(json.dumps(results))
    out = tmp_path / "r" / "page.html"
    r = CliRunner().invoke(report_cmd, [str(src), "--out", str(out), "--title", "CLI run"])
    assert r.exit_code == 0, r.output
    assert out.exists() and (tmp_path / "r" / "page.json").exists()
    assert "<title>CLI run</title>" in out.read_text()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = CliRunner().invoke(report_cmd, [str(bad), "--out", str(tmp_path / "x.html")])
    assert r.exit_code != 0 and "bad.json" in r.output and "Traceback" not in r.output


def test_missing_pieces_degrade_gracefully(tmp_path):
    results = {
        "dataset": "/d",
        "weights": "imagenet",
        "weights_note": "",
        "default_mode": "exdd",
        "thresholds": {"exdd": 0.5},
        "metrics": {"exdd": {"image_auroc": float("nan")}},
        "images": [
            {"path": str(tmp_path / "gone.png"), "label": -1, "kind": "", "scores": {"exdd": 0.7}},
            {"path": "/x/broken.png", "label": -1, "error": "not an image"},
        ],
        "errors": [{"path": "/x/other.png", "error": "truncated"}],
    }
    page, data = build_report(results)
    assert 'id="no-roc"' in page and data["roc"] == {}
    assert page.count("\u2014") >= 5  # dashes for the missing metrics
    assert "not available" in page and "broken.png" in page and "other.png" in page
    assert 'id="weights-warning"' not in page
    out = write_report(results, str(tmp_path / "r.html"))
    assert os.path.exists(out) and json.load(open(tmp_path / "r.json"))["metrics"]["exdd"]["image_auroc"] is None
    page, _ = build_report({})
    assert "<table" not in page or "No metrics" in page


def test_weights_note_without_random_is_shown():
    page, _ = build_report({"weights": "/w/custom.safetensors", "weights_note": "fine-tuned on KSDD2 train"})
    assert 'id="weights-note"' in page and "fine-tuned on KSDD2 train" in page


def test_helpers():
    assert modes_of({"metrics": {"exdd_peak": {}, "zeta": {}, "patchcore": {}}}) == ["patchcore", "exdd_peak", "zeta"]
    h = histogram(np.array([0.0, 1.0, 2.0]), np.array([0, 1, -1]), 5.0, bins=10)
    assert h["edges"][0] < 0.0 and h["edges"][-1] > 5.0 and sum(h["normal"]) == sum(h["defective"]) == 1
    assert json_safe({"a": float("inf"), "b": np.float32(2), "c": [np.int64(3)]}) == {"a": None, "b": 2.0, "c": [3]}
    imgs = [{"path": str(i), "label": i % 2, "scores": {"m": float(i)}} for i in range(10)]
    groups = dict(gallery_groups({"images": imgs}, "m", n=6))
    worst_def, worst_norm, best_def, best_norm = groups.values()
    assert [im["path"] for im in worst_def] == ["1", "3", "5"] and [im["path"] for im in best_def] == ["9", "7"]
    assert [im["path"] for im in worst_norm] == ["8", "6", "4"] and [im["path"] for im in best_norm] == ["0", "2"]


def test_nearest_sources_are_looked_for_in_the_banks_training_dataset(tiny_banks, tiny_dataset, tmp_path):
    """A relative nearest_source is found under the dataset the banks were built from (their manifest's
    sources.dataset), after the results' folder and the evaluated dataset: the gallery shows the training image."""
    from exdd.report.html import source_roots

    roots = source_roots({"banks": str(tiny_banks), "dataset": str(tmp_path / "elsewhere")}, str(tmp_path))
    assert roots[:2] == [str(tmp_path), str(tmp_path / "elsewhere")]
    assert os.path.samefile(roots[2], tiny_dataset), roots
    assert source_roots({"banks": str(tmp_path / "no-banks")}, None) == []  # no manifest: the other roots only
