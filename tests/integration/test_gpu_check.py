"""scripts/gpu_check.sh in its CPU fallback: runs from the source tree, says what it skipped, writes the JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout


def test_gpu_check_cpu_fallback_writes_figures_and_lists_skips(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHON=sys.executable, EXDD_GPU_CHECK_SHIM="1", GPU_CHECK_TIMEOUT="1400")
    p = subprocess.run(
        [
            "bash",
            os.path.join(ROOT, "scripts", "gpu_check.sh"),
            str(out),
            "--cpu",
            "--input-size",
            "64x32",
            "--d",
            "8",
            "--cpu-bank-size",
            "200",
            "--weights",
            str(tmp_path / "absent.safetensors"),
            "--data",
            str(tmp_path / "absent"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )  # shared 2-core CI: slow
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["mode"] == "cpu-fallback" and rep["weights"] == "random:0"
    assert "exdd-shim-" in rep["exdd_from"]  # the no-install path the GPU machine uses
    skipped = " | ".join(rep["skipped"])
    assert "CuPy" in skipped and "random:0" in skipped and "Triton" in skipped
    assert rep["checks"]["numpy_repeatable"]["ok"] is True
    assert rep["banks"]["negative"] == 200 and rep["figures"]["input_size"] == [64, 32]
    for key in ("extract_fps_batch1", "score_fps_batch1", "end_to_end_fps_batch1"):
        assert rep["figures"][key] > 0
    assert "extract_fps_batch8" not in rep["figures"]  # batches beyond 1 are GPU-only


@pytest.mark.gpu
def test_gpu_check_on_a_gpu_passes_the_cupy_parity(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    out = tmp_path / "gpu_check.json"
    p = subprocess.run(
        [
            "bash",
            os.path.join(ROOT, "scripts", "gpu_check.sh"),
            str(out),
            "--bank-size",
            "4000",
            "--seconds",
            "1",
            "--input-size",
            "128x64",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHON=sys.executable),
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(out.read_text())["checks"]["cupy_vs_numpy"]["ok"] is True
