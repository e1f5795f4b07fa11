"""int8 export: static QDQ quantization calibrated on normals, parity against fp32, metadata, serving shape."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import tiny_world
import triton_util as tu

from exdd.export.onnx_export import generated_images, onnx_session
from exdd.export.quantize import MIN_RANK_CORRELATION, calibration_files, quant_parity
from exdd_scoring.onnx_metadata import read_features, read_metadata


def test_cli_int8_export_prints_score_parity_and_records_precision():
    out = os.path.join(tu.workdir(), "int8.onnx")
    p = tu.exdd_cli(
        "export",
        "onnx",
        "--banks",
        tu.banks(),
        "--out",
        out,
        "--precision",
        "int8",
        "--calibration-images",
        tu.dataset(),
        "--parity-images",
        tu.dataset(),
        "--parity-count",
        "12",
    )
    # random:0 features of the tiny generated set give near-tied scores, so the verdict may go either way
    # here (BENCHMARKS.md has it on real data); the exit code must follow the printed verdict
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("parity int8:")]
    assert line and "on 12 images" in line[0] and "rank correlation" in line[0], p.stderr + p.stdout
    assert p.returncode == (0 if line[0].startswith("parity int8: ok") else 3), p.stderr
    assert read_metadata(out)["exdd.precision"] == "int8"
    assert read_features(out) == read_features(tu.onnx_fp32())
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ
    w_scales = [i for i in onnx.load(out).graph.initializer if i.name.endswith("_scale") and len(i.dims) == 1]
    assert w_scales  # per-channel weight scales
    sess = onnx_session(out)
    y = sess.run(None, {"IMAGE": generated_images(2, tu.INPUT_HW)})[0]
    assert y.dtype == np.float32 and y.shape[0] == 2
    res = quant_parity(out, tu.extractor()[0], tu.sample_images(3))
    assert res.cosine_worst > 0.9 and res.rank_correlation is None


def test_parity_verdict_needs_cosine_and_rank_correlation():
    from exdd.export.quantize import QuantParity

    assert QuantParity(8, 0.1, 0.995).ok
    assert not QuantParity(8, 0.1, 0.90).ok
    assert QuantParity(8, 0.1, 0.995, 0.995, 0.01, "exdd").ok
    assert not QuantParity(8, 0.1, 0.995, 0.98, 0.01, "exdd").ok
    assert not QuantParity(8, 0.1, float("nan")).ok


def test_int8_without_calibration_images_is_refused():
    p = tu.exdd_cli(
        "export", "onnx", "--banks", tu.banks(), "--out", os.path.join(tu.workdir(), "x.onnx"), "--precision", "int8"
    )
    assert p.returncode != 0 and "--calibration-images" in p.stderr and "Traceback" not in p.stderr


def test_calibration_uses_normal_training_images_only():
    files = calibration_files(tu.dataset(), 100)
    assert files and all(os.sep + "train" + os.sep in f for f in files)
    assert all(not os.path.basename(f).split(".")[0].endswith("_GT") for f in files)
    assert MIN_RANK_CORRELATION == 0.99


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino-f32"])
def test_offline_build_with_an_onnx_extractor_equals_the_torch_build_and_refuses_other_features(runtime):
    out = os.path.join(tu.workdir(), f"banks-onnx-{runtime}")
    p = tu.exdd_cli(
        "offline",
        "build",
        tu.dataset(),
        "--out",
        out,
        *tiny_world.BUILD_ARGS,
        "--extractor",
        tu.onnx_fp32(),
        "--extractor-runtime",
        runtime,
    )
    assert p.returncode == 0, p.stderr
    assert f"fp32, {runtime})" in p.stderr or f"f32, {runtime})" in p.stderr, p.stderr
    a, b = (np.load(os.path.join(d, "negative.npy")) for d in (out, tu.banks()))
    assert a.shape == b.shape
    # same features up to float rounding: (nearly) every selected row is one of the torch build's rows
    from exdd_scoring.knn import nearest

    dist, _ = nearest(a, b, np)
    assert np.mean(dist <= 1e-3 * float(np.linalg.norm(b, axis=1).mean())) >= 0.95
    p = tu.exdd_cli(
        "offline",
        "build",
        tu.dataset(),
        "--out",
        out + "-bad",
        "--weights",
        tu.WEIGHTS,
        "--input-size",
        f"{tu.INPUT_HW[0]}x{tu.INPUT_HW[1]}",
        "--d",
        str(tu.D * 2),
        "--extractor",
        tu.onnx_fp32(),
    )
    assert p.returncode != 0 and "d:" in p.stderr and "Traceback" not in p.stderr


def test_offline_evaluate_with_the_onnx_extractor_matches_torch():
    import json as _json

    outs = []
    for extra in ([], ["--extractor", tu.onnx_fp32()]):
        out = os.path.join(tu.workdir(), f"eval{len(extra)}.json")
        p = tu.exdd_cli("offline", "evaluate", tu.dataset(), "--banks", tu.banks(), "--out", out, "--no-pixel", *extra)
        assert p.returncode == 0, p.stderr
        outs.append(_json.load(open(out)))
    a, b = ({i["path"]: i["scores"]["exdd"] for i in o["images"]} for o in outs)
    assert a.keys() == b.keys() and a
    for k in a:
        assert abs(a[k] - b[k]) <= 1e-3 * max(abs(a[k]), 1e-6)
