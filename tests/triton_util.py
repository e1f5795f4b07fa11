"""Shared helpers of the export / Triton tests: a tiny dataset, banks, ONNX and repository, and a server.

Everything is built once per pytest process (cached by name) in a temporary directory: the tests'
one tiny world (tiny_world.py: a generated 128x64 surface dataset, banks with random:0 weights and
d=16; conftest's tiny_dataset / tiny_banks are the same folders), an fp32 ONNX export, and the
Python-backend repository. ``start_server`` runs the bundled tritonserver on free
loopback ports. The serving venv is $EXDD_SERVE_VENV, else the checkout's ``.venv-serve`` when
it exists, else the default (created on first use).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Dict, Optional

import numpy as np
import tiny_world

from exdd.defaults import SCORE_RTOL
from exdd.serving.serve import TritonServer
from exdd.serving.serving_env import VENV_ENV, resolve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout (this file is tests/...)
INPUT_HW = tiny_world.HW
D = tiny_world.D
WEIGHTS = tiny_world.WEIGHTS
_CACHE: Dict[str, Any] = {}


def workdir() -> str:
    """One temporary directory per pytest process, removed at exit."""
    if "dir" not in _CACHE:
        _CACHE["dir"] = tempfile.mkdtemp(prefix="exdd-export-tests-")
        import atexit

        atexit.register(shutil.rmtree, _CACHE["dir"], True)
    return _CACHE["dir"]


def exdd_cli(*args: str) -> subprocess.CompletedProcess:
    """Run the real exdd command line in this process (click's runner: torch is imported once per test
    session, not once per call) and capture its output as a CompletedProcess. An exception that escapes the
    command is written to stderr as the traceback a subprocess would print, with exit code 1. Commands that
    start a Ray cluster (--ray) run in a subprocess, so no Ray runtime stays in the test process."""
    if "--ray" in args:
        code = "import sys; from exdd.cli import main; sys.exit(main())"
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    import traceback

    from click.testing import CliRunner

    from exdd.cli import main

    r = CliRunner().invoke(main, list(args), prog_name="exdd")
    err = r.stderr
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        err += "Traceback (most recent call last):\n" + "".join(traceback.format_exception(r.exception))
    return subprocess.CompletedProcess(["exdd", *args], r.exit_code, r.stdout, err)


def dataset() -> str:
    """The tiny generated KSDD2-layout dataset."""
    if "dataset" not in _CACHE:
        _CACHE["dataset"] = tiny_world.generate_dataset(os.path.join(workdir(), "ds"))
    return _CACHE["dataset"]


def extractor():
    """(torch extractor, features info) of the tiny configuration."""
    if "extractor" not in _CACHE:
        from exdd.offline.features import build_extractor

        _CACHE["extractor"] = build_extractor(WEIGHTS, D, 0, INPUT_HW)
    return _CACHE["extractor"]


def banks() -> str:
    """Banks built from the tiny dataset with `exdd offline build`."""
    if "banks" not in _CACHE:
        out = os.path.join(workdir(), "banks")
        p = exdd_cli("offline", "build", dataset(), "--out", out, *tiny_world.BUILD_ARGS)
        assert p.returncode == 0, p.stderr
        _CACHE["banks"] = out
    return _CACHE["banks"]


def pca_banks() -> str:
    """Banks of the tiny dataset built with --projection pca (fitted on its normal training images; built with
    another --projection-seed, which a fitted projection does not depend on)."""
    if "pca_banks" not in _CACHE:
        out = os.path.join(workdir(), "banks-pca")
        p = exdd_cli("offline", "build", dataset(), "--out", out, *PCA_BUILD)
        assert p.returncode == 0, p.stderr
        assert "projection: pca fitted on" in p.stderr
        _CACHE["pca_banks"] = out
    return _CACHE["pca_banks"]


PCA_BUILD = (*tiny_world.BUILD_ARGS, "--projection", "pca", "--projection-seed", "5")


def onnx_fp32() -> str:
    """The fp32 ONNX of the tiny extractor (exported in-process, parity-checked by the export tests)."""
    if "onnx" not in _CACHE:
        from exdd.export.onnx_export import export_onnx

        model, info = extractor()
        _CACHE["onnx"] = export_onnx(model, info, os.path.join(workdir(), "f32.onnx"), "fp32")
    return _CACHE["onnx"]


def repository(backend: str = "python", kind: str = "cpu", name: Optional[str] = None) -> str:
    """A repository of the tiny model (Python-backend features unless told)."""
    key = name or f"repo-{backend}-{kind}"
    if key not in _CACHE:
        from exdd.serving.configs import Serving
        from exdd.serving.repository import assemble

        _CACHE[key] = assemble(
            onnx_fp32(), banks(), os.path.join(workdir(), key), backend, Serving(kind, 1, 8, 5000)
        ).path
    return _CACHE[key]


def sample_images(n: int) -> np.ndarray:
    """The first n test images of the tiny dataset, (n, H, W, 3) uint8."""
    from exdd.export.onnx_export import image_files, load_images

    return load_images(image_files(os.path.join(dataset(), "test"), n), INPUT_HW)


def serving_env():
    """The serving environment, preferring the checkout's .venv-serve when no venv is configured."""
    local = os.path.join(ROOT, ".venv-serve")
    if not os.environ.get(VENV_ENV) and os.path.isdir(local):
        os.environ[VENV_ENV] = local
    return resolve()


def start_server(repo: str, exit_on_error: bool = True, wait: str = "ready", timeout: float = 120.0) -> TritonServer:
    """scripts/harness.py's start_server with the tests' settings: the checkout's serving venv (serving_env), a
    3 s exit timeout; logs to REPO/../<repo>.log; wait 'ready', 'live' or ''."""
    from scripts.harness import start_server as start

    return start(repo, timeout=timeout, wait=wait, env=serving_env(), exit_on_error=exit_on_error, exit_timeout=3)


def offline_reference(images: np.ndarray, bank_dir: str) -> Dict[str, np.ndarray]:
    """What the offline path (torch extractor + NumPy Scorer) gives for images, in the served mode."""
    import torch

    from exdd_scoring import Scorer, load_banks

    model, info = extractor()
    b = load_banks(bank_dir, expected_features=info)
    scorer = Scorer(b)
    mode = scorer.default_mode
    with torch.no_grad():
        feats = model(torch.from_numpy(images)).numpy()
    out = scorer.score(feats, map_modes=(mode,))
    return {
        "SCORE": out.scores[mode],
        "SCORE_NEG": out.s_neg,
        "SCORE_POS": out.s_pos,
        "ANOMALY_MAP": out.maps[mode],
        "threshold": scorer.thresholds.get(mode),
        "mode": mode,
    }


def start_serve_cli(*args: str, timeout: float = 120.0):
    """`exdd serve ARGS` in a subprocess; waits for its 'ready:' line. Returns (process, stderr lines so far)."""
    import subprocess
    import sys
    import time

    code = "import sys; from exdd.cli import main; sys.exit(main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if line.startswith("ready:") or proc.poll() is not None:
            break
    return proc, lines


def assert_batch_independent(got: Dict[str, np.ndarray], want: Dict[str, np.ndarray], names=None) -> None:
    """Two answers for the same images agree as exdd promises (exdd.defaults.SCORE_RTOL): scores within that
    relative tolerance, maps within that fraction of their peak, decisions equal unless a score is that near
    the threshold."""
    for n in names or want:
        a, b = np.asarray(got[n]), np.asarray(want[n])
        assert a.shape == b.shape, n
        if n == "IS_DEFECT":
            continue
        atol = SCORE_RTOL * float(np.abs(b).max()) if n == "ANOMALY_MAP" else 0.0
        np.testing.assert_allclose(a, b, rtol=SCORE_RTOL, atol=atol, err_msg=n)


def assert_rows_agree(rows, ref) -> None:
    """Result rows of two runs of one job: the same paths in the same order, the same errors, warnings, modes
    and thresholds, scores within SCORE_RTOL, decisions equal unless a score is within SCORE_RTOL of the threshold."""
    import pytest

    assert [r["path"] for r in rows] == [r["path"] for r in ref]
    for a, b in zip(rows, ref):
        for k in ("error", "warning", "mode", "threshold", "heatmap"):
            assert a.get(k) == b.get(k), (a["path"], k)
        for k in ("score", "score_neg", "score_pos"):
            if b[k] is None:
                assert a[k] is None, (a["path"], k)
            else:
                assert float(a[k]) == pytest.approx(float(b[k]), rel=SCORE_RTOL), (a["path"], k)
        if (
            b["score"] is not None
            and b["threshold"] is not None
            and abs(float(b["score"]) - float(b["threshold"])) > SCORE_RTOL * abs(float(b["threshold"]))
        ):
            assert a["is_defect"] == b["is_defect"], a["path"]
