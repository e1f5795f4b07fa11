"""The main job end to end (small input size, random weights): every step's real command, then the report."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.triton


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "exdd.cli",
            "demo",
            "--out",
            str(out),
            "--weights",
            "random:0",
            "--input-size",
            "128x64",
            "--d",
            "32",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"report: {out / 'report.html'}" in p.stdout and "random:0" in p.stdout
    r = json.loads((out / "results.json").read_text())
    assert r["served"]["images"] == 48
    assert r["served"]["max_relative_difference_to_offline"] < 1e-3
    assert sum(1 for i in r["images"] if i.get("heatmap")) == 48
    html = (out / "report.html").read_text()
    assert "patchcore" in html and "exdd" in html and "<svg" in html
    for step in (
        "offline build",
        "export onnx",
        "export repository",
        "serve",
        "client score",
        "offline evaluate",
        "report",
    ):
        assert f"$ exdd {step}" in p.stderr
