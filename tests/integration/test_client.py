"""`exdd client` against the real local Triton server: batch jobs, resume, bad files, two servers, evaluate."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import triton_util as tu

from exdd.client.connection import Connection
from exdd.result_rows import read_rows

pytestmark = pytest.mark.triton
EXDD = [sys.executable, "-m", "exdd.cli"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """24 readable images (the tiny test images under several names, nested), one corrupt file, one text file
    named .png."""
    root = tmp_path_factory.mktemp("imgs")
    src = sorted(f for f in os.listdir(os.path.join(tu.dataset(), "test")) if not f.endswith("_GT.png"))
    for k in range(4):
        sub = root / f"line {k}"  # spaces in folder names
        sub.mkdir()
        for f in src:
            shutil.copy(os.path.join(tu.dataset(), "test", f), sub / f"cam_{k}_{f}")
    good = open(os.path.join(tu.dataset(), "test", src[0]), "rb").read()
    (root / "line 0" / "corrupt.png").write_bytes(good[: len(good) // 2])  # a truncated PNG
    (root / "line 1" / "notes.png").write_text("this is text, not an image")
    return root


def score(*args, check=True, **kw):
    p = subprocess.run(EXDD + ["client", "score", *args], capture_output=True, text=True, **kw)
    if check and p.returncode not in (0, 1):
        raise AssertionError(p.stdout + p.stderr)
    return p


def by_path(rows):
    return {r["path"]: r for r in rows}


@pytest.fixture(scope="module")
def uninterrupted(server, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.jsonl"
    p = score(str(folder), "--out", str(out), "--url", server.grpc_url, "--batch-size", "4")
    return p, read_rows(str(out))


def test_batch_job_with_bad_files(uninterrupted, folder):
    p, rows = uninterrupted
    assert p.returncode == 1, "some files failed: exit code 1"
    assert len(rows) == 26 and len({r["path"] for r in rows}) == 26
    errors = {os.path.basename(r["path"]): r["error"] for r in rows if r["error"]}
    assert set(errors) == {"corrupt.png", "notes.png"}
    assert "corrupt.png: corrupt or truncated image" in errors["corrupt.png"]
    assert "notes.png: not a recognised image file" in errors["notes.png"]
    good = [r for r in rows if not r["error"]]
    assert all(isinstance(r["score"], float) and isinstance(r["is_defect"], bool) and r["latency_ms"] > 0 for r in good)
    assert all(r["is_defect"] == (r["score"] >= r["threshold"]) for r in good)
    # the four copies of each image score the same, within what exdd promises whatever else is in the batch
    groups = {}
    for r in good:
        groups.setdefault(os.path.basename(r["path"]).split("_", 2)[2], []).append(r["score"])
    assert len(groups) == 6 and all(len(v) == 4 for v in groups.values())
    for v in groups.values():
        assert max(v) - min(v) <= tu.SCORE_RTOL * min(abs(x) for x in v), v
    # stable order: the order of expansion (sorted folders, sorted files)
    from exdd.client.sources import expand

    assert [r["path"] for r in rows] == expand([str(folder)])
    assert "scored: 24, failed: 2" in p.stdout


def test_scores_equal_the_offline_scorer(uninterrupted):
    _, rows = uninterrupted
    good = [r for r in rows if not r["error"]][:6]
    from exdd.images import read_image

    imgs = np.stack([read_image(r["path"], tu.INPUT_HW) for r in good])
    ref = tu.offline_reference(imgs, tu.banks())
    np.testing.assert_allclose([r["score"] for r in good], ref["SCORE"], rtol=1e-4, atol=1e-5)


def test_killed_job_resumes_without_loss_or_duplicates(server, folder, uninterrupted, tmp_path):
    out = tmp_path / "r.jsonl"
    args = EXDD + [
        "client",
        "score",
        str(folder),
        "--out",
        str(out),
        "--url",
        server.grpc_url,
        "--batch-size",
        "1",
        "--concurrency",
        "1",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        if out.exists() and out.read_text().count("\n") >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = out.read_text()
    assert 5 <= partial.count("\n") < 26, "killed midway"
    with open(out, "a") as f:  # a torn line, as a kill in the middle of a write leaves
        f.write('{"path": "torn')
    p = score(str(folder), "--out", str(out), "--url", server.grpc_url, "--batch-size", "3")
    assert f"already done: {partial.count(chr(10))}" in p.stdout
    assert out.read_text().startswith(partial), "the rows done before the kill are kept byte for byte"
    rows = read_rows(str(out))
    _, ref = uninterrupted
    tu.assert_rows_agree(rows, ref)  # one row each, same order; the rest as promised


def test_csv_over_http_with_heatmaps(server, folder, tmp_path, uninterrupted):
    out = tmp_path / "r.csv"
    hm = tmp_path / "heat"
    sub = folder / "line 2"
    p = score(str(sub), "--out", str(out), "--url", server.http_url, "--protocol", "http", "--heatmaps", str(hm))
    assert p.returncode == 0
    rows = read_rows(str(out))
    ref = by_path(uninterrupted[1])
    assert len(rows) == 6
    for r in rows:
        assert float(r["score"]) == pytest.approx(ref[r["path"]]["score"], rel=tu.SCORE_RTOL)
        assert os.path.dirname(r["heatmap"]) == str(hm) and os.path.isfile(r["heatmap"])
    from PIL import Image

    assert Image.open(rows[0]["heatmap"]).size == (tu.INPUT_HW[1], tu.INPUT_HW[0])


def test_two_servers_share_the_load(server, folder, tmp_path):
    second = tu.start_server(tu.repository())
    try:
        before = [Connection(u).inference_count() for u in (server.grpc_url, second.grpc_url)]
        out = tmp_path / "two.jsonl"
        p = score(
            str(folder),
            "--out",
            str(out),
            "--url",
            server.grpc_url,
            "--url",
            second.grpc_url,
            "--batch-size",
            "2",
            "--concurrency",
            "2",
        )
        after = [Connection(u).inference_count() for u in (server.grpc_url, second.grpc_url)]
    finally:
        second.stop()
    assert all(a > b for a, b in zip(after, before)), (before, after)
    assert "per server:" in p.stdout
    assert len(read_rows(str(out))) == 26


def test_unreachable_server_is_a_clear_error(folder, tmp_path):
    from exdd.serving.serve import free_port

    out = tmp_path / "x.jsonl"
    p = score(
        str(folder),
        "--out",
        str(out),
        "--url",
        f"127.0.0.1:{free_port()}",
        "--retries",
        "2",
        "--backoff",
        "0.1",
        check=False,
    )
    assert p.returncode == 3 and "server not reachable" in p.stderr and "Traceback" not in p.stderr


def test_client_evaluate_agrees_with_offline_evaluate(server, tmp_path):
    off = tmp_path / "off.json"
    r = subprocess.run(
        EXDD + ["offline", "evaluate", tu.dataset(), "--banks", tu.banks(), "--out", str(off)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    on = tmp_path / "on.json"
    p = subprocess.run(
        EXDD + ["client", "evaluate", tu.dataset(), "--url", server.grpc_url, "--out", str(on), "--compare", str(off)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    a, b = json.load(open(on)), json.load(open(off))
    mode = a["default_mode"]
    for k in ("image_auroc", "image_ap", "pixel_auroc", "pixel_aupro"):
        assert a["metrics"][mode][k] == pytest.approx(b["metrics"][mode][k], abs=2e-3), k
    sa = {i["path"]: i["scores"][mode] for i in a["images"]}
    for i in b["images"]:
        assert sa[i["path"]] == pytest.approx(i["scores"][mode], rel=1e-4)


def test_bench_and_stream(server, folder, tmp_path):
    pa = tmp_path / "pa.json"
    p = subprocess.run(
        EXDD
        + [
            "client",
            "bench",
            "--url",
            server.grpc_url,
            "--batch-sizes",
            "1,2",
            "--concurrency",
            "1,2",
            "--requests",
            "4",
            "--out",
            str(tmp_path / "b.json"),
            "--perf-analyzer-data",
            str(pa),
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    rows = json.load(open(tmp_path / "b.json"))["rows"]
    assert len(rows) == 4 and all(r["images_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in rows)
    data = json.load(open(pa))["data"][0]["IMAGE"]
    assert data["shape"] == [tu.INPUT_HW[0], tu.INPUT_HW[1], 3] and len(data["content"]) == np.prod(data["shape"])
    s = subprocess.run(
        EXDD
        + ["client", "stream", "--source", str(folder / "line 3"), "--url", server.grpc_url, "--max-in-flight", "2"],
        capture_output=True,
        text=True,
    )
    assert s.returncode == 0, s.stderr
    lines = [json.loads(x) for x in s.stdout.splitlines()]
    assert len(lines) == 6 and all("score" in x for x in lines) and "frames/s" in s.stderr


def test_bad_input_corpus_through_the_server(server, tmp_path):
    """Every awkward file becomes a scored row or a named error row; the job goes on (exit 1)."""
    import corpus

    root = tmp_path / "corpus"
    expect = corpus.make(root)
    out = tmp_path / "c.jsonl"
    p = score(str(root), "--out", str(out), "--url", server.grpc_url, "--all-files")
    rows = by_path(read_rows(str(out)))
    assert p.returncode == 1
    assert {os.path.relpath(k, root) for k in rows} == set(expect)
    for name, want in expect.items():
        r = rows[os.path.normpath(str(root / name))]
        got = "error" if r["error"] else "ok"
        assert want in (got, "either"), (name, r)
        if r["error"]:
            assert name.split("/")[-1] in r["error"]


def test_tiny_and_strip_images_are_scored_with_a_warning_that_the_summary_counts(server, tmp_path):
    """A 1x1 image and a 3x5000 strip still get a score (the job goes on), and their rows say why not to trust it."""
    from PIL import Image

    d = tmp_path / "odd"
    d.mkdir()
    Image.new("RGB", (1, 1), (128, 128, 128)).save(d / "a_dot.png")
    Image.new("RGB", (5000, 3), (90, 90, 90)).save(d / "b_strip.png")  # 3 high, 5000 wide
    src = sorted(f for f in os.listdir(os.path.join(tu.dataset(), "test")) if not f.endswith("_GT.png"))[0]
    shutil.copy(os.path.join(tu.dataset(), "test", src), d / "c_ok.png")  # the model's own input size
    out = tmp_path / "odd.jsonl"
    p = score(str(d), "--out", str(out), "--url", server.grpc_url)
    assert p.returncode == 0, p.stderr
    rows = {os.path.basename(r["path"]): r for r in read_rows(str(out))}
    assert all(isinstance(r["score"], float) and r["error"] is None for r in rows.values())
    dot, strip = rows["a_dot.png"]["warning"], rows["b_strip.png"]["warning"]
    assert dot.startswith(str(d / "a_dot.png")) and "1x1 (HxW) is far below the model input 128x64" in dot
    assert "aspect ratio" not in dot and "score not to be trusted" in dot
    assert "3x5000 (HxW) is far below" in strip and "aspect ratio W/H 1.67e+03" in strip
    assert rows["c_ok.png"]["warning"] is None
    assert "scored: 3, failed: 0, warnings: 2," in p.stdout


def test_one_job_per_out_file_and_a_killed_jobs_lock_is_taken_over(server, folder, uninterrupted, tmp_path):
    """Issue 26: a second job on the same --out refuses (exit 2) naming the file and the running job's pid (was: two
    writers doubled or cut rows); after that job is killed (SIGKILL leaves its lock file), a rerun takes the lock
    over, says so, and finishes with each image once."""
    out = tmp_path / "r.jsonl"
    lock = tmp_path / "r.jsonl.lock"
    first = subprocess.Popen(
        EXDD
        + [
            "client",
            "score",
            str(folder),
            "--out",
            str(out),
            "--url",
            server.grpc_url,
            "--batch-size",
            "1",
            "--concurrency",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (out.exists() and out.read_text().count("\n") >= 2):
        time.sleep(0.05)
    second = score(str(folder), "--out", str(out), "--url", server.grpc_url, check=False)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"error: {out}: another job is writing it (pid {first.pid}, lock file {lock})" in second.stderr
    assert lock.exists(), "SIGKILL: the lock file stays"
    p = score(str(folder), "--out", str(out), "--url", server.grpc_url, "--batch-size", "4")
    assert f"warning: {lock}: left by pid {first.pid}, which is no longer running" in p.stderr, p.stderr
    assert not lock.exists()
    tu.assert_rows_agree(read_rows(str(out)), uninterrupted[1])


def test_resume_matches_resolved_paths_and_non_utf8_names(server, folder, tmp_path):
    """A job typed with relative paths resumes when rerun with absolute ones (was: everything scored again); a file
    name that is not UTF-8 is scored, written losslessly and resumed (was: UnicodeEncodeError on every rerun)."""
    d = tmp_path / "odd"
    d.mkdir()
    src = sorted((folder / "line 3").iterdir())[0]
    raw = os.fsencode(str(d)) + b"/caf\xe9-\xff.png"
    shutil.copy(src, os.fsdecode(raw))
    shutil.copy(src, d / "plain.png")
    out = tmp_path / "r.jsonl"
    p = score("odd", "--out", str(out), "--url", server.grpc_url, cwd=str(tmp_path))
    assert p.returncode == 0 and "scored: 2, failed: 0" in p.stdout, p.stdout + p.stderr
    rows = read_rows(str(out))
    assert sorted(os.fsencode(r["path"]) for r in rows) == sorted([raw, os.fsencode(str(d / "plain.png"))])
    assert rows[0]["score"] == pytest.approx(rows[1]["score"], rel=tu.SCORE_RTOL)
    p = score(str(d), os.fsdecode(raw), "--out", "r.jsonl", "--url", server.grpc_url, cwd=str(tmp_path))
    assert p.returncode == 0 and "images: 2, already done: 2, scored: 0" in p.stdout, p.stdout + p.stderr


def test_retry_errors_rescores_server_failures_not_bad_files(server, folder, uninterrupted, tmp_path):
    """--retry-errors: a row of a server-side failure (as a crashed backend leaves: error_kind server) is scored again
    and replaces its old row; the bad files' rows (error_kind input) stay; a corrupt line is reported by number and
    skipped while the job goes on."""
    out = tmp_path / "r.jsonl"
    ref = uninterrupted[1]
    lines = []
    for r in ref[:8]:
        if r["path"] == ref[2]["path"]:
            r = dict(
                r,
                score=None,
                is_defect=None,
                error=f"{r['path']}: server rejected the request (stub process is not healthy)",
                error_kind="server",
            )
        lines.append(json.dumps(r))
    lines.insert(5, "{this line is not JSON")
    out.write_text("\n".join(lines) + "\n")
    plain = score(str(folder), "--out", str(out), "--url", server.grpc_url)
    assert f"warning: {out} line 6: not a JSON row" in plain.stderr, plain.stderr
    assert "already done: 8," in plain.stdout  # without the flag the failure's row stays
    p = score(str(folder), "--out", str(out), "--url", server.grpc_url, "--retry-errors")
    assert "1 row(s) of a server-side failure taken out" in p.stderr and "already done: 25, scored: 1," in p.stdout
    rows = by_path(read_rows(str(out)))
    again = rows[ref[2]["path"]]
    assert again["error"] is None and again["score"] == pytest.approx(ref[2]["score"], rel=tu.SCORE_RTOL)
    bad = [r for r in rows.values() if r["error"]]
    assert len(rows) == 26 and len(bad) == 2 and all(r["error_kind"] == "input" for r in bad)
    assert "{this line is not JSON\n" in out.read_text()  # left as it was, nothing lost
