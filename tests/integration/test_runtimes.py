"""Extractor runtimes (exdd_scoring.runtimes): ONNX Runtime and OpenVINO run the same exported file, offline
and inside the served exdd_features model; `export onnx --precision bf16` checks the file as OpenVINO runs it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import triton_util as tu

from exdd.export.quantize import cosine_rows
from exdd_scoring.onnx_metadata import read_features, read_metadata
from exdd_scoring.runtimes import RUNTIMES, open_runtime


def test_onnxruntime_and_openvino_run_the_same_file_alike_and_read_its_metadata():
    path, imgs = tu.onnx_fp32(), tu.sample_images(3)
    ort = open_runtime("onnxruntime", path)
    f32 = open_runtime("openvino", path, "f32")
    bf16 = open_runtime("openvino", path, "bf16")
    a, b, c = ort.run(imgs), f32.run(imgs), bf16.run(imgs)
    assert a.dtype == b.dtype == c.dtype == np.float32 and a.shape == b.shape == c.shape
    scale = float(np.abs(a).max())
    np.testing.assert_allclose(b, a, atol=1e-4 * scale, rtol=0)  # OpenVINO f32: the same numbers
    d = a.shape[-1]
    cos = cosine_rows(c.reshape(-1, d).astype(np.float64), a.reshape(-1, d).astype(np.float64))
    assert cos.mean() > 0.99  # bf16: close, not equal
    assert not np.array_equal(c, a) or "bf16" in bf16.note  # (equal only where the CPU has no bf16)
    stored = json.loads(ort.metadata("exdd.features"))
    assert stored == read_features(path) == json.loads(f32.metadata("exdd.features"))
    assert ort.precision == "fp32" and bf16.precision == "bf16" and ort.metadata("no.such.key") is None
    assert f32.metadata("no.such.key") is None


def test_unknown_runtime_and_precision_are_refused_by_name():
    with pytest.raises(ValueError, match="onnxruntime"):
        open_runtime("tensorflow", tu.onnx_fp32())
    with pytest.raises(ValueError, match="bf16"):
        open_runtime("openvino", tu.onnx_fp32(), "int4")
    assert set(RUNTIMES) == {"onnxruntime", "openvino"}


def test_cli_bf16_export_writes_the_fp32_file_and_prints_the_bf16_parity():
    out = os.path.join(tu.workdir(), "bf16.onnx")
    p = tu.exdd_cli(
        "export",
        "onnx",
        "--banks",
        tu.banks(),
        "--out",
        out,
        "--precision",
        "bf16",
        "--parity-images",
        tu.dataset(),
        "--parity-count",
        "8",
    )
    assert "parity fp32: ok" in p.stdout, p.stdout + p.stderr
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("parity bf16:")]
    assert line and "on 8 images" in line[0] and "rank correlation" in line[0] and "OpenVINO" in line[0], p.stdout
    # near-tied random:0 scores of the tiny set: the verdict may go either way; the exit code follows it
    assert p.returncode == (0 if line[0].startswith("parity bf16: ok") else 3), p.stderr
    assert read_metadata(out)["exdd.precision"] == "fp32" and read_features(out) == read_features(tu.onnx_fp32())


def test_ray_build_refuses_an_onnx_extractor_instead_of_ignoring_it():
    p = tu.exdd_cli(
        "offline",
        "build",
        tu.dataset(),
        "--out",
        os.path.join(tu.workdir(), "ray-onnx"),
        "--weights",
        tu.WEIGHTS,
        "--input-size",
        f"{tu.INPUT_HW[0]}x{tu.INPUT_HW[1]}",
        "--d",
        str(tu.D),
        "--extractor",
        tu.onnx_fp32(),
        "--ray",
        "local",
    )
    assert p.returncode == 2 and "--extractor with --ray" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.triton
def test_served_openvino_features_equal_openvino_in_process():
    import tritonclient.http as th

    repo = tu.repository("python-openvino")
    config = open(os.path.join(repo, "exdd_features", "config.pbtxt")).read()
    assert 'string_value: "openvino"' in config and 'string_value: "bf16"' in config
    imgs = tu.sample_images(3)
    ref = open_runtime("openvino", os.path.join(repo, "exdd_features", "1", "model.onnx"), "bf16").run(imgs)
    srv = tu.start_server(repo)
    try:
        with th.InferenceServerClient(srv.http_url) as c:
            inp = th.InferInput("IMAGE", list(imgs.shape), "UINT8")
            inp.set_data_from_numpy(imgs)
            got = c.infer("exdd_features", [inp]).as_numpy("FEATURES")
            r = c.infer("exdd", [inp])
            scores = r.as_numpy("SCORE")
    finally:
        srv.stop()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-3 * float(np.abs(ref).max()), rtol=0)
    assert scores.shape == (3, 1) and np.isfinite(scores).all()


def test_openvino_backend_is_cpu_only_and_its_readme_names_bf16(tmp_path):
    from exdd.serving.configs import Serving
    from exdd.serving.repository import RepositoryError, assemble

    with pytest.raises(RepositoryError, match="--kind cpu"):
        assemble(tu.onnx_fp32(), tu.banks(), str(tmp_path / "gpu"), "python-openvino", Serving("gpu", 1, 8, 2000))
    assert not os.path.exists(tmp_path / "gpu")
    repo = assemble(tu.onnx_fp32(), tu.banks(), str(tmp_path / "cpu"), "python-openvino", Serving()).path
    assert "python-openvino (bf16)" in open(os.path.join(repo, "README.md")).read()
    assert os.path.isfile(os.path.join(repo, "exdd_features", "1", "model.py"))
