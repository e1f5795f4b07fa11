"""Regressions of issue 12 through the real server: an uncalibrated repository (no threshold), client
evaluate with a bad mask, and a video frame scored like the same picture as a file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import triton_util as tu
from PIL import Image

from exdd.client.connection import Connection, served_threshold
from exdd.result_rows import read_rows

pytestmark = pytest.mark.triton
EXDD = [sys.executable, "-m", "exdd.cli"]


def uncalibrated_banks(dest: str) -> str:
    """A copy of the tiny banks whose manifest has no threshold (as `--holdout 0` or an old manifest)."""
    shutil.copytree(tu.banks(), dest)
    path = os.path.join(dest, "manifest.json")
    m = json.load(open(path))
    m.pop("threshold", None)
    json.dump(m, open(path, "w"), indent=2)
    return dest


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server on a repository assembled from banks without a calibrated threshold."""
    from exdd.serving.configs import Serving
    from exdd.serving.repository import assemble

    root = tmp_path_factory.mktemp("uncal")
    banks = uncalibrated_banks(str(root / "banks"))
    a = assemble(tu.onnx_fp32(), banks, str(root / "repo"), "python", Serving("cpu", 1, 8, 2000))
    assert a.threshold is None
    s = tu.start_server(a.path)
    yield s
    s.stop()


def test_served_threshold_text():
    assert served_threshold(None) is None and served_threshold("") is None and served_threshold("none") is None
    assert served_threshold("0.25") == 0.25
    from exdd.client.connection import RequestRejected

    with pytest.raises(RequestRejected, match="'abc'"):
        served_threshold("abc")


def test_uncalibrated_repository_scores_streams_and_evaluates(server, tmp_path):
    """Defect 1: every client command used to die on float('none')."""
    info = Connection(server.grpc_url).info()
    assert info.threshold is None
    test_dir = os.path.join(tu.dataset(), "test")
    out = tmp_path / "r.jsonl"
    p = subprocess.run(
        EXDD + ["client", "score", test_dir, "--exclude", "*_GT.png", "--out", str(out), "--url", server.grpc_url],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    rows = read_rows(str(out))
    assert len(rows) == 6 and all(
        r["error"] is None and r["threshold"] is None and r["is_defect"] is False for r in rows
    )
    s = subprocess.run(
        EXDD + ["client", "stream", "--source", test_dir, "--url", server.http_url, "--protocol", "http"],
        capture_output=True,
        text=True,
    )
    assert s.returncode == 0 and "Traceback" not in s.stderr, s.stderr
    assert len([json.loads(x) for x in s.stdout.splitlines()]) == 12  # images and masks: all are frames
    b = subprocess.run(
        EXDD
        + ["client", "bench", "--url", server.grpc_url, "--batch-sizes", "1", "--concurrency", "1", "--requests", "2"],
        capture_output=True,
        text=True,
    )
    assert b.returncode == 0, b.stderr
    e = subprocess.run(
        EXDD + ["client", "evaluate", tu.dataset(), "--url", server.grpc_url, "--out", str(tmp_path / "e.json")],
        capture_output=True,
        text=True,
    )
    assert e.returncode == 0, e.stderr
    assert json.load(open(tmp_path / "e.json"))["thresholds"] == {}


def test_client_evaluate_keeps_images_and_labels_paired_past_a_bad_mask(server, tmp_path):
    """Defect 2: a mis-sized mask used to leave its image in the batch, shifting every later score."""
    from exdd.datasets import load_split
    from exdd.images import read_image

    data = tmp_path / "data"
    shutil.copytree(tu.dataset(), data)
    samples = load_split(str(data), "test")
    bad = next(s for s in samples if s.label == 1)
    assert bad is not samples[-1], "the bad mask must come before other samples"
    Image.fromarray(np.full((10, 7), 255, np.uint8)).save(bad.mask)  # defective, but the wrong size
    out = tmp_path / "e.json"
    p = subprocess.run(
        EXDD
        + [
            "client",
            "evaluate",
            str(data),
            "--url",
            server.grpc_url,
            "--out",
            str(out),
            "--batch-size",
            "8",
            "--concurrency",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    res = json.load(open(out))
    assert [e["path"] for e in res["errors"]] == [bad.path] and "mask is 10x7" in res["errors"][0]["error"]
    rows = res["images"]
    want = [s for s in samples if s.path != bad.path]
    assert [r["path"] for r in rows] == [s.path for s in want]
    assert [r["label"] for r in rows] == [s.label for s in want]
    out_direct = Connection(server.grpc_url).infer(np.stack([read_image(s.path, tu.INPUT_HW) for s in want]))
    mode = res["default_mode"]
    np.testing.assert_allclose([r["scores"][mode] for r in rows], out_direct["SCORE"].reshape(-1), rtol=1e-5)


def textured_picture(path: str) -> np.ndarray:
    """A test image of the tiny dataset at 3x its size with a fine pattern (where resize filters differ)."""
    from exdd.images import read_image

    src = read_image(
        os.path.join(
            tu.dataset(),
            "test",
            sorted(f for f in os.listdir(os.path.join(tu.dataset(), "test")) if not f.endswith("_GT.png"))[-1],
        )
    )
    big = np.asarray(Image.fromarray(src).resize((src.shape[1] * 3, src.shape[0] * 3), Image.NEAREST)).astype(np.int16)
    yy, xx = np.mgrid[: big.shape[0], : big.shape[1]]
    big = (big + np.where((yy + xx) % 2 == 0, 40, -40)[..., None]).clip(0, 255).astype(np.uint8)
    Image.fromarray(big).save(path)
    return big


def test_a_video_frame_scores_like_the_same_picture_as_a_file(server, tmp_path):
    """Defect 3: `client stream` resized frames with OpenCV INTER_LINEAR (no antialiasing)."""
    import cv2

    from exdd.client.stream import frames
    from exdd.images import read_image

    frames_dir = tmp_path / "video"
    frames_dir.mkdir()
    big = textured_picture(str(frames_dir / "f_000.png"))
    as_file = read_image(str(frames_dir / "f_000.png"), tu.INPUT_HW)
    # the same picture through the video path (OpenCV's image-sequence reader)
    got = list(frames(str(frames_dir / "f_%03d.png"), tu.INPUT_HW))
    assert len(got) == 1 and got[0][2] is None
    np.testing.assert_array_equal(got[0][1], as_file)
    old = cv2.resize(big, (tu.INPUT_HW[1], tu.INPUT_HW[0]), interpolation=cv2.INTER_LINEAR)
    assert np.abs(old.astype(int) - as_file).mean() > 5, "the picture must be one where the two resizes differ"
    # and through the server: `client score` on the file vs `client stream` on the frame
    out = tmp_path / "f.jsonl"
    p = subprocess.run(
        EXDD + ["client", "score", str(frames_dir / "f_000.png"), "--out", str(out), "--url", server.grpc_url],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    s = subprocess.run(
        EXDD + ["client", "stream", "--source", str(frames_dir / "f_%03d.png"), "--url", server.grpc_url],
        capture_output=True,
        text=True,
    )
    assert s.returncode == 0, s.stderr
    frame = json.loads(s.stdout.splitlines()[0])
    assert frame["score"] == pytest.approx(read_rows(str(out))[0]["score"], rel=1e-4)
