"""The assembled repository on a real tritonserver (the bundled 2.51, Python-backend features).

Served results must equal the offline path (torch extractor + NumPy Scorer) for the same
images: scores within rtol 1e-4 and maps within 1e-4 of their scale (ONNX Runtime vs torch
features differ by ~1e-6 relative; everything after is the same float32 math).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import triton_util as tu

pytestmark = pytest.mark.triton
RTOL = tu.SCORE_RTOL
OUTPUTS = ("SCORE", "IS_DEFECT", "SCORE_NEG", "SCORE_POS", "ANOMALY_MAP")


@pytest.fixture(scope="module")
def reference():
    imgs = tu.sample_images(6)
    return imgs, tu.offline_reference(imgs, tu.banks())


def http_infer(url, images, params=None, model="exdd", name="IMAGE", dtype="UINT8"):
    import tritonclient.http as th

    with th.InferenceServerClient(url) as c:
        inp = th.InferInput(name, list(images.shape), dtype)
        inp.set_data_from_numpy(images)
        r = c.infer(model, [inp], parameters=params)
        return {n: r.as_numpy(n) for n in OUTPUTS}


def grpc_infer(url, images):
    import tritonclient.grpc as tg

    with tg.InferenceServerClient(url) as c:
        inp = tg.InferInput("IMAGE", list(images.shape), "UINT8")
        inp.set_data_from_numpy(images)
        r = c.infer("exdd", [inp])
        return {n: r.as_numpy(n) for n in OUTPUTS}


def assert_matches(got, ref, sl=slice(None)):
    for n in ("SCORE", "SCORE_NEG", "SCORE_POS"):
        np.testing.assert_allclose(got[n][:, 0], ref[n][sl], rtol=RTOL, atol=RTOL * 1e-3, err_msg=n)
    amap = ref["ANOMALY_MAP"][sl]
    assert got["ANOMALY_MAP"].shape == amap.shape
    np.testing.assert_allclose(got["ANOMALY_MAP"], amap, rtol=RTOL, atol=RTOL * float(np.abs(amap).max()))
    np.testing.assert_array_equal(got["IS_DEFECT"][:, 0], ref["SCORE"][sl] >= ref["threshold"])


def test_http_matches_offline_scorer(server, reference):
    imgs, ref = reference
    got = http_infer(server.http_url, imgs[:4])
    assert got["SCORE"].dtype == np.float32 and got["IS_DEFECT"].dtype == np.bool_
    assert_matches(got, ref, slice(0, 4))


def test_grpc_matches_offline_scorer(server, reference):
    imgs, ref = reference
    assert_matches(grpc_infer(server.grpc_url, imgs), ref)


def test_concurrent_requests_equal_one_by_one(server, reference):
    imgs, ref = reference
    singles = [http_infer(server.http_url, imgs[i : i + 1]) for i in range(len(imgs))]
    with ThreadPoolExecutor(len(imgs)) as pool:
        together = list(pool.map(lambda i: http_infer(server.http_url, imgs[i : i + 1]), range(len(imgs))))
    for a, b in zip(singles, together):  # batched with others vs alone: as exdd promises
        tu.assert_batch_independent(b, a)
    stacked = {n: np.concatenate([s[n] for s in singles]) for n in OUTPUTS}
    assert_matches(stacked, ref)


def test_model_config_tells_clients_input_size_mode_and_threshold(server, reference):
    import tritonclient.http as th

    _, ref = reference
    with th.InferenceServerClient(server.http_url) as c:
        ens = c.get_model_config("exdd")
        scorer = c.get_model_config("exdd_scorer")
        pre = c.get_model_config("exdd_preprocess")
    assert [int(v) for v in ens["input"][0]["dims"]] == [-1, -1, 3]  # any size: exdd_preprocess resizes
    assert [int(v) for v in pre["output"][0]["dims"]] == [tu.INPUT_HW[0], tu.INPUT_HW[1], 3]
    assert ens["max_batch_size"] == 8
    params = scorer["parameters"]
    assert params["mode"]["string_value"] == ref["mode"]
    assert float(params["threshold"]["string_value"]) == pytest.approx(ref["threshold"], rel=1e-6)


def test_threshold_request_parameter_overrides(server, reference):
    imgs, ref = reference
    high = http_infer(server.http_url, imgs[:3], {"threshold": 1e9})
    low = http_infer(server.http_url, imgs[:3], {"threshold": -1e9})
    assert not high["IS_DEFECT"].any() and low["IS_DEFECT"].all()
    # a threshold halfway between two of the scores (one at a score could be decided either way: the promise is
    # SCORE_RTOL, not bit-identity)
    low2 = np.sort(ref["SCORE"][:3])[:2]
    mid = float(low2.mean())
    assert (low2[1] - mid) > 10 * RTOL * abs(mid)  # the scores are apart by far more than the tolerance
    got = http_infer(server.http_url, imgs[:3], {"threshold": str(mid)})
    np.testing.assert_array_equal(got["IS_DEFECT"][:, 0], ref["SCORE"][:3] >= mid)
    assert 0 < got["IS_DEFECT"].sum() < 3


def _expect_error(fn, *needles):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as e:
        fn()
    msg = str(e.value)
    assert any(n in msg for n in needles), msg
    return msg


def test_malformed_requests_get_errors_and_server_keeps_serving(server, reference):
    imgs, ref = reference
    url = server.http_url
    h, w = tu.INPUT_HW
    _expect_error(lambda: http_infer(url, imgs[:1].astype(np.float32), dtype="FP32"), "expects 'UINT8'")
    _expect_error(lambda: http_infer(url, np.zeros((1, h, w, 4), np.uint8)), "unexpected shape")
    _expect_error(lambda: http_infer(url, np.zeros((0, h, w, 3), np.uint8)), "byte size mismatch", "B>=1")
    _expect_error(lambda: http_infer(url, np.zeros((9, h, w, 3), np.uint8)), "batch-size must be <=", "batch size")
    _expect_error(lambda: http_infer(url, imgs[:1], {"threshold": "__import__('os')"}), "'threshold' must be a number")
    _expect_error(lambda: http_infer(url, imgs[:1], {"threshold": True}), "'threshold' must be a number")
    grid = tu.extractor()[1]["grid"]
    bad = np.full((1, grid[0], grid[1], tu.D), np.nan, np.float32)
    _expect_error(lambda: http_infer(url, bad, model="exdd_scorer", name="FEATURES", dtype="FP32"), "NaN")
    assert_matches(http_infer(url, imgs[:2]), ref, slice(0, 2))


def test_bad_request_in_a_batch_does_not_sink_the_others(server, reference):
    from tritonclient.utils import InferenceServerException

    imgs, ref = reference
    grid = tu.extractor()[1]["grid"]
    bad = np.full((1, grid[0], grid[1], tu.D), np.inf, np.float32)

    def good(i):
        return http_infer(server.http_url, imgs[i : i + 1])

    def poison(_):
        try:
            http_infer(server.http_url, bad, model="exdd_scorer", name="FEATURES", dtype="FP32")
        except InferenceServerException as e:
            return str(e)
        return "no error"

    with ThreadPoolExecutor(6) as pool:
        goods = [pool.submit(good, i) for i in range(3)]
        bads = [pool.submit(poison, i) for i in range(3)]
        results = [g.result() for g in goods]
        errors = [b.result() for b in bads]
    assert all("inf" in e for e in errors), errors
    for i, r in enumerate(results):
        assert_matches(r, ref, slice(i, i + 1))


def scorer_infer(url, feats, outputs=None):
    """exdd_scorer on FEATURES, asking for outputs (None: every output), answered outputs by name."""
    import tritonclient.http as th

    with th.InferenceServerClient(url) as c:
        inp = th.InferInput("FEATURES", list(feats.shape), "FP32")
        inp.set_data_from_numpy(feats)
        asked = None if outputs is None else [th.InferRequestedOutput(n) for n in outputs]
        r = c.infer("exdd_scorer", [inp], outputs=asked)
        return {n: r.as_numpy(n) for n in (outputs or OUTPUTS)}


def test_a_request_for_the_score_alone_is_answered_without_the_map(server, reference):
    """The scorer skips the map when no request of its batch asks for ANOMALY_MAP (Scorer.score(map_modes=())
    builds none: test_scores); the scores are those of a full request, alone or batched with one asking for it."""
    import tritonclient.http as th

    imgs, ref = reference
    with th.InferenceServerClient(server.http_url) as c:
        inp = th.InferInput("IMAGE", list(imgs[:3].shape), "UINT8")
        inp.set_data_from_numpy(imgs[:3])
        feats = c.infer("exdd_features", [inp]).as_numpy("FEATURES")
    full = scorer_infer(server.http_url, feats)
    lean = scorer_infer(server.http_url, feats, ["SCORE", "SCORE_NEG"])
    assert set(lean) == {"SCORE", "SCORE_NEG"}
    np.testing.assert_array_equal(lean["SCORE"], full["SCORE"])
    np.testing.assert_array_equal(lean["SCORE_NEG"], full["SCORE_NEG"])
    assert_matches(full, ref, slice(0, 3))
    with ThreadPoolExecutor(6) as pool:  # mixed batches: the map goes to those asking for it only
        got = list(
            pool.map(
                lambda i: scorer_infer(server.http_url, feats[i % 3 : i % 3 + 1], None if i % 2 else ["SCORE"]),
                range(6),
            )
        )
    for i, g in enumerate(got):
        tu.assert_batch_independent(g, {n: full[n][i % 3 : i % 3 + 1] for n in g})
    # through the ensemble Triton asks the scorer for every output: the request parameter anomaly_map false (exdd
    # client sends it unless it wants maps) is what skips the map there, and no map comes back
    with th.InferenceServerClient(server.http_url) as c:
        inp = th.InferInput("IMAGE", list(imgs[:3].shape), "UINT8")
        inp.set_data_from_numpy(imgs[:3])
        r = c.infer("exdd", [inp], parameters={"anomaly_map": False})
        assert r.as_numpy("ANOMALY_MAP") is None
        np.testing.assert_array_equal(r.as_numpy("SCORE"), full["SCORE"])
    _expect_error(
        lambda: http_infer(server.http_url, imgs[:1], {"anomaly_map": "no"}),
        "request parameter 'anomaly_map' must be true or false",
    )


def test_swapped_banks_fail_to_load_with_a_clear_message():
    src = tu.repository("python")
    repo = os.path.join(tu.workdir(), "swapped")
    shutil.rmtree(repo, ignore_errors=True)
    os.makedirs(repo)
    shutil.copytree(os.path.join(src, "exdd_scorer"), os.path.join(repo, "exdd_scorer"))
    mpath = os.path.join(repo, "exdd_scorer", "1", "banks", "manifest.json")
    with open(mpath) as f:
        m = json.load(f)
    m["features"]["d"] = 32  # banks made for other features
    with open(mpath, "w") as f:
        json.dump(m, f)
    srv = tu.start_server(repo, exit_on_error=False, wait="live")
    try:
        req = urllib.request.Request(f"http://{srv.http_url}/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            index = {e["name"]: e for e in json.load(r)}
        entry = index["exdd_scorer"]
        assert entry["state"] == "UNAVAILABLE"
        assert "refusing to load" in entry["reason"] and "d: bank has 32, features have 16" in entry["reason"]
    finally:
        srv.stop()
    assert "d: bank has 32" in open(srv.log_path).read()


def _has_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.mark.gpu
def test_gpu_scorer_with_cupy_equals_numpy(reference):
    if not _has_gpu():
        pytest.skip("needs a CUDA GPU with cupy")
    import cupy
    import torch

    from exdd_scoring import Scorer, load_banks

    imgs, ref = reference
    model, info = tu.extractor()
    with torch.no_grad():
        feats = model(torch.from_numpy(imgs)).numpy()
    s = Scorer(load_banks(tu.banks(), expected_features=info), xp=cupy)
    out = s.score(cupy.asarray(feats), map_modes=(ref["mode"],))
    np.testing.assert_allclose(cupy.asnumpy(out.scores[ref["mode"]]), ref["SCORE"], rtol=1e-4)


@pytest.mark.gpu
def test_gpu_repository_serves_with_dlpack_inputs(reference):
    if not _has_gpu():
        pytest.skip("needs a CUDA GPU with cupy in the serving venv")
    imgs, ref = reference
    srv = tu.start_server(tu.repository("python", "gpu"))
    try:
        assert_matches(http_infer(srv.http_url, imgs), ref)
    finally:
        srv.stop()


def test_serve_cli_starts_warns_when_exposed_and_stops_on_sigint():
    import signal

    from exdd.serving.serve import free_port

    tu.serving_env()  # sets EXDD_SERVE_VENV to the checkout's venv when there is one
    ports = [str(free_port()) for _ in range(3)]
    proc, lines = tu.start_serve_cli(
        tu.repository("python"),
        "--host",
        "0.0.0.0",
        "--http-port",
        ports[0],
        "--grpc-port",
        ports[1],
        "--metrics-port",
        ports[2],
    )
    assert lines[-1].startswith("ready:"), "".join(lines[-20:])
    assert any("WARNING: binding 0.0.0.0" in ln for ln in lines)
    with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/health/ready", timeout=5) as r:
        assert r.status == 200
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped (exit code 0)" in rest and "Traceback" not in rest


def test_serve_on_ipv6_loopback():
    """Issue 12, defect 6: --host ::1 is loopback; the port check must use an IPv6 socket and URLs brackets."""
    import socket

    from exdd.client.connection import Connection, normalise_url
    from exdd.serving.serve import TritonServer, free_port, port_in_use

    assert normalise_url("::1", "grpc") == "[::1]:8001" and normalise_url("[::1]", "http") == "[::1]:8000"
    assert normalise_url("http://[::1]:9000/", "http") == "[::1]:9000" and normalise_url("host", "grpc") == "host:8001"
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as taken:
        taken.bind(("::1", 0))
        taken.listen(1)
        assert port_in_use("::1", taken.getsockname()[1])
    ports = [free_port("::1") for _ in range(3)]
    assert not port_in_use("::1", ports[0])
    repo = tu.repository("python")
    srv = TritonServer(repo, "::1", *ports, env=tu.serving_env(), log_path=repo + "-v6.log", exit_timeout=3)
    assert srv.grpc_url == f"[::1]:{ports[1]}" and srv.http_url == f"[::1]:{ports[0]}"
    with srv:
        for url, protocol in ((srv.grpc_url, "grpc"), (srv.http_url, "http")):
            c = Connection(url, protocol)
            assert c.info().input_hw == tu.INPUT_HW
            assert c.infer(tu.sample_images(1))["SCORE"].shape == (1, 1)


def test_client_reads_the_served_feature_spec(server):
    from exdd.client.connection import Connection
    from exdd_scoring import FeatureSpec

    info = Connection(server.grpc_url).info()
    assert info.features == FeatureSpec.from_dict(tu.extractor()[1])
    assert info.features.input_size == info.input_hw == tu.INPUT_HW
