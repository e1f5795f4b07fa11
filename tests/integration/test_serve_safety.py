"""No outage from one bad file, one stray request or one killed command (issue 26, the server side).

One real `exdd serve` on a three-product repository (one shared extractor) whose product beta has a truncated
bank, product gamma a half-written newest version, with the leftovers of killed deploys in the repository: the
server starts, alpha answers from its banks, beta and gamma are reported not ready (and have no series in the
metrics), /v2/health/ready stays 200; the model-repository API refuses requests without the model-control key
while `exdd deploy` (which sends it) swaps, and brings beta back without a restart. Without a server: deploys are
serialised by a lock that names its holder (a dead one included); a writer killed mid-way leaves the old folder
intact; `offline build --out` and `export repository --force` swap a new folder in.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import triton_util as tu

from exdd.serving.admin_key import HEADER
from exdd.serving.deploy import versions
from exdd.serving.products import ProductModels
from exdd.serving.repo_lock import LOCK_NAME, repository_lock
from exdd.serving.serve import free_port

pytestmark = pytest.mark.triton
ALPHA, BETA, GAMMA = ProductModels("alpha"), ProductModels("beta"), ProductModels("gamma")


def _http(url: str, path: str, post: bool = False, headers=None):
    """(status, body) of one request."""
    req = urllib.request.Request(
        f"http://{url}{path}", data=b"{}" if post else None, headers=headers or {}, method="POST" if post else "GET"
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _infer(url, model, images):
    import tritonclient.http as th

    with th.InferenceServerClient(url, network_timeout=120) as c:
        inp = th.InferInput("IMAGE", list(images.shape), "UINT8")
        inp.set_data_from_numpy(images)
        return c.infer(model, [inp]).as_numpy("SCORE").ravel()


def _key() -> str:
    with open(os.environ["EXDD_ADMIN_KEY_FILE"]) as f:
        return f.read().strip()


@pytest.fixture(scope="module")
def fleet():
    """(repo, http url, grpc url, metrics port, serve's stderr) of `exdd serve` on alpha (healthy), beta (truncated
    negative bank), gamma (version 2 half-written) and two leftover deploy folders."""
    repo = os.path.join(tu.workdir(), "repo-safety")
    p = tu.exdd_cli(
        "export",
        "repository",
        "--onnx",
        tu.onnx_fp32(),
        "--product",
        f"alpha={tu.banks()}",
        "--product",
        f"beta={tu.banks()}",
        "--product",
        f"gamma={tu.banks()}",
        "--out",
        repo,
        "--features-backend",
        "python",
        "--force",
    )
    assert p.returncode == 0, p.stderr
    bank = os.path.join(repo, BETA.scorer, "1", "banks", "negative.npy")
    data = open(bank, "rb").read()
    open(bank, "wb").write(data[: len(data) - 100])
    # gamma: a copy of version 1 interrupted while its banks were copied (half an array, no manifest)
    half = os.path.join(repo, GAMMA.scorer, "2")
    shutil.copytree(os.path.join(repo, GAMMA.scorer, "1"), half)
    os.remove(os.path.join(half, "banks", "manifest.json"))
    neg = os.path.join(half, "banks", "negative.npy")
    open(neg, "wb").write(open(neg, "rb").read()[:1000])
    # what a deploy killed mid-way leaves: older exdd staged at the top (Triton took it for a model and, with
    # --exit-on-error, ended the server), this one inside the scorer folder
    shutil.copytree(os.path.join(repo, ALPHA.scorer, "1"), os.path.join(repo, ".exdd-deploy-killed"))
    shutil.copytree(os.path.join(repo, ALPHA.scorer, "1"), os.path.join(repo, ALPHA.scorer, ".exdd-deploy-killed"))
    # ... and the lock it held (its pid is dead)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    with open(os.path.join(repo, LOCK_NAME), "w") as f:
        json.dump(
            {
                "pid": dead.pid,
                "host": socket.gethostname(),
                "started": "2026-01-01T00:00:00+00:00",
                "doing": "adding exdd_alpha_scorer version 2 from /banks-v2",
            },
            f,
        )
    if os.path.exists(os.environ["EXDD_ADMIN_KEY_FILE"]):
        os.remove(os.environ["EXDD_ADMIN_KEY_FILE"])  # serve generates it
    tu.serving_env()
    ports = [free_port() for _ in range(3)]
    proc, lines = tu.start_serve_cli(
        repo, "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])
    )
    try:
        assert lines[-1].startswith("ready:"), "".join(lines[-30:])
        yield repo, f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}", ports[2], "".join(lines)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def test_bad_products_and_leftovers_leave_the_healthy_product_serving(fleet):
    repo, http, _, metrics_port, text = fleet
    # the leftovers are gone, and said so
    assert not os.path.exists(os.path.join(repo, ".exdd-deploy-killed"))
    assert not os.path.exists(os.path.join(repo, ALPHA.scorer, ".exdd-deploy-killed"))
    assert text.count("removed the leftover of an unfinished deploy") == 2
    # the dead deploy's lock is reported at start (and kept: the operator clears it, see the next test)
    assert "warning: " in text and "left by a deploy that is no longer running" in text
    assert os.path.exists(os.path.join(repo, LOCK_NAME))
    # each product named ready or not, with the server's reason
    assert "product alpha: send IMAGE or IMAGE_BYTES to exdd_alpha" in text
    assert "product beta: NOT READY (exdd_beta_scorer:" in text and "negative.npy: checksum mismatch" in text
    assert "product gamma: NOT READY (exdd_gamma_scorer:" in text
    # health: the server is ready (a bad product does not take the others out of a load balancer); per product
    # readiness on the product's ensemble; the shared extractor ready (the k8s readiness probe)
    assert _http(http, "/v2/health/ready")[0] == 200
    assert _http(http, "/v2/models/exdd_features/ready")[0] == 200
    assert _http(http, f"/v2/models/{ALPHA.ensemble}/ready")[0] == 200
    for pm in (BETA, GAMMA):
        assert _http(http, f"/v2/models/{pm.ensemble}/ready")[0] != 200
        assert _http(http, f"/v2/models/{pm.scorer}/ready")[0] != 200
    # alpha answers from its banks; beta's requests fail, naming the model
    imgs = tu.sample_images(2)
    np.testing.assert_allclose(
        _infer(http, ALPHA.ensemble, imgs), tu.offline_reference(imgs, tu.banks())["SCORE"], rtol=tu.SCORE_RTOL
    )
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="exdd_beta"):
        _infer(http, BETA.ensemble, imgs)
    # metrics: the healthy product's series, none for the products that did not load
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert "exdd_images_scored_total{" in metrics and "exdd_threshold{" in metrics
    # a model the server knows (Triton keeps its nv_inference_request_failure series) but that is not loaded
    # (no nv_inference_count, none of the scorer's exdd_* series): the alert rule RELIABILITY.md gives
    known, loaded = _models(metrics, "nv_inference_request_failure"), _models(metrics, "nv_inference_count")
    assert {ALPHA.scorer, ALPHA.ensemble, "exdd_features"} <= loaded
    assert known - loaded == {BETA.scorer, GAMMA.scorer}
    assert BETA.ensemble not in known | loaded and GAMMA.ensemble not in known | loaded
    exdd_series = [ln for ln in metrics.splitlines() if ln.startswith("exdd_")]
    assert any('product="alpha"' in ln for ln in exdd_series)
    assert not any('product="beta"' in ln or 'product="gamma"' in ln for ln in exdd_series)


def _models(metrics: str, name: str) -> set:
    """The model labels of a metric's series."""
    import re

    return {m.group(1) for m in re.finditer(name + r'\{[^}]*model="([^"]+)"', metrics)}


def test_model_control_needs_the_key_and_deploy_sends_it(fleet, tmp_path):
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    repo, http, grpc, _, text = fleet
    path = os.environ["EXDD_ADMIN_KEY_FILE"]
    assert f"model-control key: generated, stored in {path} (mode 0600)" in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # without the key (or with another): unload and load are refused over HTTP and gRPC, the index too
    for headers in ({}, {HEADER: "x" * 43}):
        code, body = _http(http, f"/v2/repository/models/{ALPHA.scorer}/unload", post=True, headers=headers)
        assert code == 403 and "restricted" in body
        assert _http(http, f"/v2/repository/models/{ALPHA.scorer}/load", post=True, headers=headers)[0] == 403
        assert _http(http, "/v2/repository/index", post=True, headers=headers)[0] == 403
    # shared-memory registration (never used by exdd's clients) is closed the same way
    code, body = _http(http, "/v2/systemsharedmemory/region/probe/register", post=True)
    assert code == 403 and "restricted" in body
    with tg.InferenceServerClient(grpc) as c:
        with pytest.raises(InferenceServerException, match="restricted"):
            c.unload_model(ALPHA.scorer)
        assert c.is_model_ready(ALPHA.ensemble)
    assert _http(http, f"/v2/models/{ALPHA.scorer}/ready")[0] == 200
    # with it, the index answers
    code, body = _http(http, "/v2/repository/index", post=True, headers={HEADER: _key()})
    assert code == 200 and {"name": ALPHA.scorer, "version": "1", "state": "READY"} in json.loads(body)

    # the dead deploy's lock refuses the next deploy until the operator removes it, as the message says
    p = tu.exdd_cli("deploy", tu.banks(), "--repository", repo, "--product", "beta", "--url", http)
    assert p.returncode != 0 and f"rm {os.path.join(repo, LOCK_NAME)}" in p.stderr
    os.remove(os.path.join(repo, LOCK_NAME))
    # exdd deploy with a key that is not the server's: refused by the server, nothing left behind
    wrong = tmp_path / "wrong-key"
    wrong.write_text("y" * 43)
    wrong.chmod(0o600)
    p = tu.exdd_cli(
        "deploy", tu.banks(), "--repository", repo, "--product", "beta", "--url", http, "--admin-key-file", str(wrong)
    )
    assert p.returncode != 0 and "restricted" in p.stderr and f"the key from {wrong} is not the server's" in p.stderr
    assert "Traceback" not in p.stderr and versions(os.path.join(repo, BETA.scorer)) == [1]
    wrong.chmod(0o644)
    p = tu.exdd_cli(
        "deploy", tu.banks(), "--repository", repo, "--product", "beta", "--url", http, "--admin-key-file", str(wrong)
    )
    assert p.returncode != 0 and f"chmod 600 {wrong}" in p.stderr and "Traceback" not in p.stderr

    # exdd deploy (the key from serve's file) swaps good banks into the broken product: it serves, no restart
    p = tu.exdd_cli("deploy", tu.banks(), "--repository", repo, "--product", "beta", "--url", http)
    assert p.returncode == 0, p.stderr
    assert "exdd_beta_scorer: version 2 added (previous 1)" in p.stdout and "version 2 serving" in p.stdout
    assert _http(http, f"/v2/models/{BETA.ensemble}/ready")[0] == 200
    imgs = tu.sample_images(2)
    np.testing.assert_allclose(
        _infer(http, BETA.ensemble, imgs), tu.offline_reference(imgs, tu.banks())["SCORE"], rtol=tu.SCORE_RTOL
    )
    assert not os.path.exists(os.path.join(repo, LOCK_NAME))


def _repo_copy(tmp_path) -> str:
    repo = str(tmp_path / "repo")
    shutil.copytree(tu.repository("python"), repo)
    return repo


def test_deploys_are_serialised_and_a_dead_holder_is_named(tmp_path):
    repo = _repo_copy(tmp_path)
    config = open(os.path.join(repo, "exdd_scorer", "config.pbtxt")).read()
    # a deploy running (here: this process holds the lock): a second one is refused, nothing written
    with repository_lock(repo) as lock:
        lock.note("adding exdd_scorer version 2 from /somewhere")
        p = tu.exdd_cli("deploy", tu.banks(), "--repository", repo)
        assert p.returncode != 0 and "another deploy is running" in p.stderr and f"pid {os.getpid()}" in p.stderr
        assert "adding exdd_scorer version 2" in p.stderr and "Traceback" not in p.stderr
    assert versions(os.path.join(repo, "exdd_scorer")) == [1]
    assert open(os.path.join(repo, "exdd_scorer", "config.pbtxt")).read() == config
    # a deploy killed holding the lock (a dead pid): refused, saying so and how to clear it -- never taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file = os.path.join(repo, LOCK_NAME)
    import socket

    with open(lock_file, "w") as f:
        json.dump(
            {
                "pid": dead.pid,
                "host": socket.gethostname(),
                "started": "2026-01-01T00:00:00+00:00",
                "doing": "adding exdd_scorer version 2 from /banks-v2",
            },
            f,
        )
    p = tu.exdd_cli("deploy", tu.banks(), "--repository", repo)
    assert p.returncode != 0 and "no longer running" in p.stderr and f"pid {dead.pid}" in p.stderr
    assert f"rm {lock_file}" in p.stderr and "adding exdd_scorer version 2 from /banks-v2" in p.stderr
    assert versions(os.path.join(repo, "exdd_scorer")) == [1]
    os.remove(lock_file)
    p = tu.exdd_cli("deploy", tu.banks(), "--repository", repo)
    assert p.returncode == 0 and "version 2 added" in p.stdout, p.stderr
    assert not os.path.exists(lock_file)
    assert not [n for n in os.listdir(os.path.join(repo, "exdd_scorer")) if n.startswith(".")]


def test_a_writer_killed_mid_way_leaves_the_old_folder_whole(tmp_path):
    """staged_dir (banks of offline build/update, the repository of export --force): SIGKILL while the new folder
    is half written leaves the old one byte for byte, and the next write swaps a whole new one in."""
    from exdd.fileio import staged_dir

    dest = tmp_path / "banks"
    shutil.copytree(tu.banks(), dest)
    before = {n: (dest / n).read_bytes() for n in os.listdir(dest)}
    code = (
        "import os, signal, sys\nfrom exdd.fileio import staged_dir\n"
        "with staged_dir(sys.argv[1]) as tmp:\n"
        "    open(os.path.join(tmp, 'negative.npy'), 'wb').write(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(dest)])
    assert p.returncode == -signal.SIGKILL
    assert {n: (dest / n).read_bytes() for n in os.listdir(dest)} == before
    from exdd_scoring import load_banks

    load_banks(str(dest))  # checksums hold
    with staged_dir(str(dest)) as tmp:
        open(os.path.join(tmp, "only.txt"), "w").write("new")
    assert os.listdir(dest) == ["only.txt"]
    assert stat.S_IMODE(os.stat(dest).st_mode) & 0o755 == 0o755


def test_build_and_export_force_swap_a_new_folder_in(tmp_path):
    from conftest import TINY_ARGS, run_exdd

    from exdd_scoring import load_banks

    # offline build --out over existing banks: a new folder swapped in (another inode), never written in place
    out = tmp_path / "banks"
    shutil.copytree(tu.banks(), out)
    # a folder holding anything but banks is refused before any work (it would be replaced whole: `--out .`)
    (out / "notes.txt").write_text("mine")
    p = run_exdd("offline", "build", tu.dataset(), "--out", str(out), *TINY_ARGS, check=False)
    assert p.returncode != 0 and "holds other files than banks (notes.txt)" in p.stderr and "Traceback" not in p.stderr
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    ino = os.stat(out).st_ino
    run_exdd("offline", "build", tu.dataset(), "--out", str(out), *TINY_ARGS, "--projection-seed", "1")
    assert os.stat(out).st_ino != ino
    assert load_banks(str(out)).manifest.features.projection_seed == 1  # the new banks, not the copied ones
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]
    # export repository --force over a repository: swapped in whole, the old one removed only after
    repo = tmp_path / "repo"
    shutil.copytree(tu.repository("python"), repo)
    ino = os.stat(repo).st_ino
    p = tu.exdd_cli(
        "export",
        "repository",
        "--onnx",
        tu.onnx_fp32(),
        "--banks",
        tu.banks(),
        "--out",
        str(repo),
        "--features-backend",
        "python",
        "--force",
    )
    assert p.returncode == 0, p.stderr
    assert os.stat(repo).st_ino != ino and versions(str(repo / "exdd_scorer")) == [1]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_serving_venv_has_the_pinned_versions():
    """The pins of serving_env.SERVING_PACKAGES are the versions the suite's server runs with (a venv at other
    versions reports them missing, and `exdd serve` reinstalls them at the pins)."""
    from exdd.serving.serving_env import SERVING_PACKAGES, requirement, venv_dir, venv_info

    tu.serving_env()
    assert all("==" in requirement(m) for m in SERVING_PACKAGES)
    assert venv_info(venv_dir())["missing"] == []
