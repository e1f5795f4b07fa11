"""Zero-downtime bank swaps and decision metrics on a real tritonserver (explicit model control).

Load runs during `exdd deploy`: no request fails, every answer comes wholly from the old or the
new banks, answers after the swap come from the new ones. Banks made for other features are
refused by the CLI, and a version the server cannot load leaves the old one serving. The
scorer's custom metrics are read from the server's /metrics endpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import urllib.request

import numpy as np
import pytest
import triton_util as tu

from exdd.serving.deploy import DeployError, deploy, load, ready_version, versions
from exdd.serving.serve import EXPLICIT_MODEL_CONTROL, TritonServer, free_port

pytestmark = pytest.mark.triton
RTOL = 1e-4
BATCH = 3


def _updated_banks() -> str:
    """tu.banks() taught 3 generated tile surfaces (another texture: the scores move)."""
    from exdd.offline.build import model_featurizer
    from exdd.offline.surfaces import generate
    from exdd.offline.update import normal_samples, update

    root = os.path.join(tu.workdir(), "tile")
    generate(root, 3, 0, 2, 0, (160, 80), "tile", 7)
    out = os.path.join(tu.workdir(), "banks-v2")
    if not os.path.isdir(out):
        model, info = tu.extractor()
        update(tu.banks(), out, normal_samples([os.path.join(root, "train")]), [], model_featurizer(model, info, 8))
    return out


def _probe_images() -> np.ndarray:
    """Two surfaces between two copies of the taught tile texture's test image whose score the update moves most,
    so that every 3-image window holds an image that tells the two bank versions apart."""
    from exdd.export.onnx_export import image_files, load_images

    tiles = load_images(image_files(os.path.join(tu.workdir(), "tile", "test"), 2), tu.INPUT_HW)
    old = tu.offline_reference(tiles, tu.banks())["SCORE"].ravel()
    new = tu.offline_reference(tiles, _updated_banks())["SCORE"].ravel()
    t = tiles[int(np.argmax(np.abs(new - old) / np.abs(old)))][None]
    return np.concatenate([t, tu.sample_images(2), t])


@pytest.fixture(scope="module")
def setup():
    new_banks = _updated_banks()
    repo = os.path.join(tu.workdir(), "repo-deploy")
    shutil.copytree(tu.repository("python"), repo)
    log = repo + ".log"
    srv = TritonServer(
        repo,
        "127.0.0.1",
        free_port(),
        free_port(),
        free_port(),
        env=tu.serving_env(),
        log_path=log,
        exit_on_error=True,
        exit_timeout=3,
        extra_args=EXPLICIT_MODEL_CONTROL,
    )
    srv.start()
    try:
        srv.wait_ready(120)
        yield repo, srv, new_banks
    finally:
        srv.stop()


def _infer(client, images):
    import tritonclient.http as th

    inp = th.InferInput("IMAGE", list(images.shape), "UINT8")
    inp.set_data_from_numpy(images)
    r = client.infer("exdd", [inp])
    return r.as_numpy("SCORE")[:, 0], r.as_numpy("IS_DEFECT")[:, 0]


def _metrics(srv) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=10) as r:
        return r.read().decode()


def _metric(text: str, name: str, version: int) -> float:
    """Sum of the series of name whose labels say version."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + "{") and f'version="{version}"' in line:
            total += float(line.rsplit(" ", 1)[1])
            found = True
    if not found:
        raise KeyError(f"{name} version {version} not in /metrics")
    return total


def test_swap_under_load_then_refusals_and_metrics(setup):
    import tritonclient.http as th

    repo, srv, new_banks = setup
    imgs = _probe_images()
    old = tu.offline_reference(imgs, tu.banks())["SCORE"]
    new = tu.offline_reference(imgs, new_banks)["SCORE"]
    batches = [np.ascontiguousarray(imgs[i : i + BATCH]) for i in range(len(imgs) - BATCH + 1)]
    refs = [(old[i : i + BATCH], new[i : i + BATCH]) for i in range(len(batches))]
    # the two bank versions must be told apart on every probe batch
    assert all(not np.allclose(o, n, rtol=10 * RTOL) for o, n in refs)

    answers, errors, stop = [], [], threading.Event()
    swapped_at = [float("inf")]

    def worker(w):
        with th.InferenceServerClient(srv.http_url, network_timeout=120) as c:
            i = w
            while not stop.is_set():
                b = i % len(batches)
                t0 = time.monotonic()
                try:
                    score, _ = _infer(c, batches[b])
                    answers.append((t0, b, score))
                except Exception as e:
                    errors.append(repr(e))
                i += 1

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(3.0)
        d = deploy(new_banks, repo, srv.http_url)
        swapped_at[0] = time.monotonic()
        time.sleep(4.0)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert d.version == 2 and d.previous == 1 and d.loaded
    assert versions(os.path.join(repo, "exdd_scorer")) == [1, 2]
    assert errors == [], errors[:3]
    kinds = []
    for t0, b, score in answers:
        o, n = refs[b]
        is_old = np.allclose(score, o, rtol=RTOL, atol=1e-7)
        is_new = np.allclose(score, n, rtol=RTOL, atol=1e-7)
        assert is_old or is_new, f"batch {b}: {score} is neither {o} (old) nor {n} (new) -- mixed or wrong"
        kinds.append((t0, "old" if is_old else "new"))
    assert any(k == "old" for _, k in kinds) and any(k == "new" for _, k in kinds)
    after = [k for t0, k in kinds if t0 > swapped_at[0]]
    assert after and all(k == "new" for k in after)
    assert ready_version(srv.http_url, 2) and not ready_version(srv.http_url, 1)
    rec = json.load(open(os.path.join(repo, "exdd_scorer", "2", "deploy.json")))
    assert rec["previous"] == 1 and rec["parent"]["manifest_sha256"]

    # banks made for other features: refused by the CLI, nothing written, version 2 keeps serving
    alien = os.path.join(tu.workdir(), "banks-alien")
    shutil.copytree(new_banks, alien)
    m = json.load(open(os.path.join(alien, "manifest.json")))
    m["features"]["weights"] = "random:1"
    json.dump(m, open(os.path.join(alien, "manifest.json"), "w"))
    p = tu.exdd_cli("deploy", alien, "--repository", repo, "--url", srv.http_url)
    assert p.returncode != 0 and "refused" in p.stderr and "weights: bank has 'random:1'" in p.stderr
    assert "Traceback" not in p.stderr
    assert versions(os.path.join(repo, "exdd_scorer")) == [1, 2]
    # a version the server itself refuses (bypassing the CLI check): the load fails, 2 keeps serving
    bad = os.path.join(repo, "exdd_scorer", "3")
    shutil.copytree(os.path.join(repo, "exdd_scorer", "2"), bad)
    shutil.rmtree(os.path.join(bad, "banks"))
    shutil.copytree(alien, os.path.join(bad, "banks"))
    with pytest.raises(DeployError, match="loading exdd_scorer failed"):
        load(srv.http_url, 120)
    shutil.rmtree(bad)
    assert ready_version(srv.http_url, 2)
    with th.InferenceServerClient(srv.http_url) as c:
        score, _ = _infer(c, batches[0])
    np.testing.assert_allclose(score, refs[0][1], rtol=RTOL, atol=1e-7)

    # decision metrics of version 2: exact deltas for a known set of requests
    before = _metrics(srv)
    sent, flagged = 0, 0
    with th.InferenceServerClient(srv.http_url) as c:
        for b in batches:
            s, f = _infer(c, b)
            sent += len(s)
            flagged += int(f.sum())
    after_text = _metrics(srv)
    assert "# TYPE exdd_score histogram" in after_text and "# TYPE exdd_images_scored_total counter" in after_text
    delta = lambda name: _metric(after_text, name, 2) - _metric(before, name, 2)  # noqa: E731
    assert delta("exdd_images_scored_total") == sent
    assert delta("exdd_defects_flagged_total") == flagged
    assert delta("exdd_score_count") == sent
    assert _metric(after_text, "exdd_threshold", 2) > 0
    assert re.search(r'exdd_score_bucket\{[^}]*le="\+Inf"[^}]*version="2"', after_text) or re.search(
        r'exdd_score_bucket\{[^}]*version="2"[^}]*le="\+Inf"', after_text
    )
    assert 'version="1"' not in "\n".join(ln for ln in after_text.splitlines() if ln.startswith("exdd_"))


def test_serve_cli_uses_explicit_model_control_and_deploy_cli_swaps(tmp_path):
    import signal

    import tritonclient.http as th

    new_banks = _updated_banks()
    repo = str(tmp_path / "repo")
    shutil.copytree(tu.repository("python"), repo)
    tu.serving_env()
    ports = [str(free_port()) for _ in range(3)]
    proc, lines = tu.start_serve_cli(repo, "--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2])
    try:
        assert lines[-1].startswith("ready:"), "".join(lines[-20:])
        url = f"127.0.0.1:{ports[0]}"
        p = tu.exdd_cli("deploy", new_banks, "--repository", repo, "--url", url)
        assert p.returncode == 0, p.stderr
        assert "version 2 added (previous 1)" in p.stdout and "version 2 serving" in p.stdout
        imgs = _probe_images()[:2]
        with th.InferenceServerClient(url) as c:
            score, _ = _infer(c, imgs)
        np.testing.assert_allclose(score, tu.offline_reference(imgs, new_banks)["SCORE"], rtol=RTOL, atol=1e-7)
        # without a server: the version is only added
        p = tu.exdd_cli("deploy", tu.banks(), "--repository", repo)
        assert p.returncode == 0 and "version 3 added" in p.stdout and "not loaded" in p.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def test_restart_after_five_deploys_with_keep_2_serves_the_newest_banks(tmp_path):
    """Pruned scorer versions never take another model with them: after five deploys (--keep 2) a restarted
    server loads every model and answers from the newest banks."""
    import tritonclient.http as th

    new_banks = _updated_banks()
    repo = str(tmp_path / "repo")
    shutil.copytree(tu.repository("python"), repo)
    order = [new_banks, tu.banks(), new_banks, tu.banks(), new_banks]  # the newest: new_banks

    def server():
        return TritonServer(
            repo,
            "127.0.0.1",
            free_port(),
            free_port(),
            free_port(),
            env=tu.serving_env(),
            log_path=str(tmp_path / "server.log"),
            exit_on_error=True,
            exit_timeout=3,
            extra_args=EXPLICIT_MODEL_CONTROL,
        )

    srv = server().start()
    try:
        srv.wait_ready(120)
        for banks in order:
            d = deploy(banks, repo, srv.http_url, keep=2)
            assert d.loaded
    finally:
        srv.stop()
    assert versions(os.path.join(repo, "exdd_scorer")) == [5, 6]
    srv = server().start()
    try:
        srv.wait_ready(120)  # "failed to load all models" would end the server here
        imgs = _probe_images()
        with th.InferenceServerClient(srv.http_url) as c:
            for model in ("exdd", "exdd_features", "exdd_scorer"):
                assert c.is_model_ready(model), model
            assert c.is_model_ready("exdd_scorer", "6")
            # the decision metrics count client images only, not the warm-up sample: a job of two (one black)
            assert _metric(_metrics(srv), "exdd_images_scored_total", 6) == 0
            folder = tmp_path / "two"
            folder.mkdir()
            from PIL import Image

            Image.new("RGB", (tu.INPUT_HW[1], tu.INPUT_HW[0])).save(folder / "black.png")
            Image.fromarray(imgs[0]).save(folder / "probe.png")
            p = tu.exdd_cli("client", "score", str(folder), "--out", str(tmp_path / "two.jsonl"), "--url", srv.grpc_url)
            assert p.returncode == 0, p.stderr
            assert _metric(_metrics(srv), "exdd_images_scored_total", 6) == 2
            assert _metric(_metrics(srv), "exdd_score_count", 6) == 2
            score, _ = _infer(c, imgs)
    finally:
        srv.stop()
    np.testing.assert_allclose(score, tu.offline_reference(imgs, new_banks)["SCORE"], rtol=RTOL, atol=1e-7)
