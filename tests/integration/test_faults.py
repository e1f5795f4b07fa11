"""Faults: the server killed mid-job and restarted, a bank file altered on disk, request parameters as code."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import triton_util as tu

from exdd.result_rows import read_rows
from exdd.serving.serve import TritonServer, free_port, port_in_use

pytestmark = pytest.mark.triton
EXDD = [sys.executable, "-m", "exdd.cli"]


def images_folder(root, copies: int = 5) -> str:
    src = sorted(f for f in os.listdir(os.path.join(tu.dataset(), "test")) if not f.endswith("_GT.png"))
    for k in range(copies):
        for f in src:
            shutil.copy(os.path.join(tu.dataset(), "test", f), os.path.join(root, f"c{k}_{f}"))
    return str(root)


def server_on(ports, log) -> TritonServer:
    s = TritonServer(tu.repository(), "127.0.0.1", *ports, env=tu.serving_env(), log_path=log, exit_timeout=3)
    deadline = time.time() + 30
    while any(port_in_use("127.0.0.1", p) for p in ports) and time.time() < deadline:
        time.sleep(0.2)  # the killed server's ports are released
    return s.start().wait_ready(120)


def test_server_killed_mid_job_then_restarted(tmp_path):
    folder = images_folder(tmp_path)
    n = len(os.listdir(folder))
    ports = (free_port(), free_port(), free_port())
    url = f"127.0.0.1:{ports[1]}"
    out = tmp_path / "job.jsonl"
    cmd = EXDD + [
        "client",
        "score",
        folder,
        "--out",
        str(out),
        "--url",
        url,
        "--batch-size",
        "1",
        "--concurrency",
        "1",
        "--retries",
        "3",
        "--backoff",
        "0.2",
    ]
    s = server_on(ports, str(tmp_path / "s1.log"))
    try:
        job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 4):
            time.sleep(0.05)
        os.kill(s.proc.pid, signal.SIGKILL)  # the server dies mid-job
        stdout, stderr = job.communicate(timeout=120)
    finally:
        s.stop()
    assert job.returncode == 3, stdout + stderr
    assert "rerun the same command to resume" in stderr and "Traceback" not in stderr
    partial = read_rows(str(out))  # what was written stays valid
    assert 4 <= len(partial) < n
    s2 = server_on(ports, str(tmp_path / "s2.log"))
    try:
        again = subprocess.run(cmd, capture_output=True, text=True)
        ref = tmp_path / "ref.jsonl"
        subprocess.run(cmd[:7] + [str(ref)] + cmd[8:], capture_output=True, text=True, check=True)
    finally:
        s2.stop()
    assert again.returncode == 0, again.stderr
    rows, want = read_rows(str(out)), read_rows(str(ref))
    assert [r["path"] for r in rows] == [r["path"] for r in want] and len(rows) == n
    tu.assert_rows_agree(rows, want)


def _index(srv) -> dict:
    req = urllib.request.Request(f"http://{srv.http_url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return {e["name"]: e for e in json.load(r)}


def test_truncated_bank_file_is_refused_at_load(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(tu.repository(), repo)
    bank = repo / "exdd_scorer" / "1" / "banks" / "negative.npy"
    data = bank.read_bytes()
    bank.write_bytes(data[: len(data) - 100])
    srv = tu.start_server(str(repo), exit_on_error=False, wait="live")
    try:
        deadline = time.time() + 60
        entry = {}
        while time.time() < deadline:
            entry = _index(srv).get("exdd_scorer", {})
            if entry.get("state") in ("UNAVAILABLE", "READY"):
                break
            time.sleep(0.5)
    finally:
        srv.stop()
    assert entry.get("state") == "UNAVAILABLE"
    assert "negative.npy: checksum mismatch" in entry.get("reason", "") + open(srv.log_path).read()


def test_threshold_parameter_is_never_code(tmp_path):
    """A request parameter that looks like code is refused as a bad value, and nothing runs."""
    import tritonclient.http as th

    canary = tmp_path / "pwned"
    srv = tu.start_server(tu.repository())
    try:
        c = th.InferenceServerClient(srv.http_url)
        img = tu.sample_images(1)
        inp = th.InferInput("IMAGE", list(img.shape), "UINT8")
        inp.set_data_from_numpy(img)
        code = f"__import__('os').system('touch {canary}')"
        with pytest.raises(Exception) as e:
            c.infer("exdd", [inp], parameters={"threshold": code})
        assert "threshold" in str(e.value)
        ok = c.infer("exdd", [inp])  # the server keeps serving
        assert np.isfinite(ok.as_numpy("SCORE")).all()
    finally:
        srv.stop()
    assert not canary.exists()
