"""Encoded images and raw arrays of any size, decoded and resized on the server (issue 21, part 1), on a real
tritonserver: one picture scores the same on every path (a file through `client score`, its bytes through
`client score --send bytes`, its bytes in a plain KServe v2 binary HTTP request, the decoded array at its own size
through plain tritonclient, a video frame through `client stream`), within SCORE_RTOL. The plain requests are built
without exdd code. Bad pictures get errors naming the input and the problem; the other requests are answered.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import triton_util as tu
from PIL import Image

from exdd.result_rows import read_rows

pytestmark = pytest.mark.triton
EXDD = [sys.executable, "-m", "exdd.cli"]
RTOL = tu.SCORE_RTOL


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A PNG and a JPEG of a 700x250 (HxW) picture and a PNG and a JPEG of a wide 150x400 one, made from a test
    image of the tiny dataset (so they hold surface, not noise): name -> path."""
    root = tmp_path_factory.mktemp("pictures")
    src = Image.fromarray(tu.sample_images(1)[0])
    out = {}
    for name, (h, w) in (("tall", (700, 250)), ("wide", (150, 400))):
        big = src.resize((w, h), Image.BICUBIC)
        for ext, kw in ((".png", {}), (".jpg", {"quality": 90})):
            path = root / f"{name}{ext}"
            big.save(path, **kw)
            out[name + ext] = str(path)
    return out


def plain_array(path):
    """A file decoded by Pillow alone, at its own size (what a client that decodes but never resizes sends)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def tc_infer(url, name, data, dtype):
    """Plain tritonclient HTTP: one input, the answer's SCORE (B,) and IMAGE_HW (B, 2)."""
    import tritonclient.http as th

    with th.InferenceServerClient(url) as c:
        inp = th.InferInput(name, list(data.shape), dtype)
        inp.set_data_from_numpy(data, binary_data=True)
        r = c.infer("exdd", [inp])
        return r.as_numpy("SCORE")[:, 0], r.as_numpy("IMAGE_HW")


def http_bytes(url, blob):
    """The KServe v2 binary tensor extension by hand (urllib): a JSON header, then the BYTES element as its 4-byte
    little-endian length and the file's bytes; returns (HTTP status, JSON answer)."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "IMAGE_BYTES",
                    "shape": [1, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob) + 4},
                }
            ],
            "outputs": [{"name": "SCORE"}, {"name": "IMAGE_HW"}],
        }
    ).encode()
    req = urllib.request.Request(
        f"http://{url}/v2/models/exdd/infer",
        data=header + struct.pack("<I", len(blob)) + blob,
        headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def output(answer, name):
    return next(o for o in answer["outputs"] if o["name"] == name)["data"]


def score_cli(*args):
    p = subprocess.run(EXDD + ["client", "score", *args], capture_output=True, text=True)
    assert p.returncode in (0, 1), p.stdout + p.stderr
    return p


def frame_video(path, rgb):
    """A lossless (FFV1) video of two frames of rgb."""
    import cv2

    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"FFV1"), 5, (rgb.shape[1], rgb.shape[0]))
    assert w.isOpened()
    for _ in range(2):
        w.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    w.release()
    cap = cv2.VideoCapture(path)
    ok, bgr = cap.read()
    cap.release()
    assert ok and np.array_equal(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), rgb)  # the codec kept every pixel
    return path


def test_one_picture_scores_the_same_on_every_path(server, pictures, tmp_path):
    files = sorted(pictures.values())
    ref = tmp_path / "array.jsonl"
    score_cli(*files, "--out", str(ref), "--url", server.grpc_url)
    sent = tmp_path / "bytes.jsonl"
    p = score_cli(*files, "--out", str(sent), "--url", server.grpc_url, "--send", "bytes", "--batch-size", "2")
    rows, by_bytes = read_rows(str(ref)), read_rows(str(sent))
    assert p.returncode == 0 and all(r["error"] is None for r in rows + by_bytes), p.stdout + p.stderr
    tu.assert_rows_agree(by_bytes, rows)  # scores, decisions, and the warning column
    warned = {r["path"] for r in rows if r["warning"]}
    assert warned == {pictures["wide.png"], pictures["wide.jpg"]}
    assert all("aspect ratio" in r["warning"] for r in by_bytes if r["path"] in warned)
    want = {r["path"]: r["score"] for r in rows}
    for path in files:
        blob = open(path, "rb").read()
        status, answer = http_bytes(server.http_url, blob)
        assert status == 200, answer
        arr = plain_array(path)
        assert output(answer, "IMAGE_HW") == list(arr.shape[:2])
        assert output(answer, "SCORE")[0] == pytest.approx(want[path], rel=RTOL), path
        got, hw = tc_infer(server.http_url, "IMAGE", arr[None], "UINT8")
        assert hw.tolist() == [list(arr.shape[:2])]
        assert float(got[0]) == pytest.approx(want[path], rel=RTOL), path
        got, _ = tc_infer(server.http_url, "IMAGE_BYTES", np.array([[blob]], dtype=object), "BYTES")
        assert float(got[0]) == pytest.approx(want[path], rel=RTOL), path
    video = frame_video(str(tmp_path / "line.avi"), plain_array(pictures["tall.png"]))
    s = subprocess.run(
        EXDD + ["client", "stream", "--source", video, "--url", server.grpc_url], capture_output=True, text=True
    )
    assert s.returncode == 0, s.stderr
    frames = [json.loads(x) for x in s.stdout.splitlines()]
    assert len(frames) == 2
    for f in frames:
        assert f["score"] == pytest.approx(want[pictures["tall.png"]], rel=RTOL)


def test_an_array_of_the_model_size_passes_through_and_batches_mix(server, pictures):
    """Model-size arrays are not resized again (equal to the offline scores); a batch of encoded files of different
    sizes is answered as each file alone, as exdd promises whatever else is in a batch."""
    imgs = tu.sample_images(2)
    got, hw = tc_infer(server.http_url, "IMAGE", imgs, "UINT8")
    np.testing.assert_allclose(got, tu.offline_reference(imgs, tu.banks())["SCORE"], rtol=RTOL)
    assert hw.tolist() == [list(tu.INPUT_HW)] * 2
    blobs = [open(pictures[n], "rb").read() for n in ("tall.png", "wide.jpg", "tall.jpg")]
    together, hw = tc_infer(server.http_url, "IMAGE_BYTES", np.array([[b] for b in blobs], dtype=object), "BYTES")
    alone = [tc_infer(server.http_url, "IMAGE_BYTES", np.array([[b]], dtype=object), "BYTES")[0][0] for b in blobs]
    np.testing.assert_allclose(together, alone, rtol=RTOL)
    assert hw.tolist() == [[700, 250], [150, 400], [700, 250]]


def _bomb_png(w, h):
    """A well-formed 200-byte PNG whose header claims w x h pixels (valid chunks and CRCs, a tiny IDAT)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + chunk(b"IEND", b"")
    )


def test_bad_pictures_get_named_errors_while_good_requests_are_answered(server, pictures):
    from tritonclient.utils import InferenceServerException

    good = open(pictures["tall.png"], "rb").read()
    buf = io.BytesIO()
    Image.new("RGB", (40, 30)).save(buf, "EPS")  # a real PostScript file: never handed to Ghostscript
    eps = buf.getvalue()
    bad = {
        "eps": (
            eps,
            "input IMAGE_BYTES[0]: format EPS (by its header) is not accepted (accepted formats: PNG, "
            "JPEG, BMP, TIFF, WEBP, GIF)",
        ),
        "garbage": (b"this is not an image at all" * 4, "input IMAGE_BYTES[0]: not a recognised image file"),
        "truncated": (good[: len(good) // 2], "input IMAGE_BYTES[0]: corrupt or truncated image"),
        "bomb": (_bomb_png(30000, 30000), "input IMAGE_BYTES[0]: refused as a decompression bomb"),
        "bomb_9k": (_bomb_png(9000, 8000), "input IMAGE_BYTES[0]: refused as a decompression bomb"),
        "empty": (b"", "input IMAGE_BYTES[0]: empty (0 bytes)"),
        "second": ([good, b"\x00" * 10], "input IMAGE_BYTES[1]: not a recognised image file"),
    }

    def send(item):
        blobs = item if isinstance(item, list) else [item]
        try:
            return tc_infer(server.http_url, "IMAGE_BYTES", np.array([[b] for b in blobs], dtype=object), "BYTES")[0]
        except InferenceServerException as e:
            return str(e)

    want, _ = tc_infer(server.http_url, "IMAGE_BYTES", np.array([[good]], dtype=object), "BYTES")
    with ThreadPoolExecutor(9) as pool:  # bad and good requests in the same dynamic batches
        futures = {k: pool.submit(send, v[0]) for k, v in bad.items()}
        goods = [pool.submit(send, good) for _ in range(3)]
        errors = {k: f.result() for k, f in futures.items()}
        answers = [g.result() for g in goods]
    for k, (_, needle) in bad.items():
        assert isinstance(errors[k], str) and "exdd_preprocess: " + needle in errors[k], (k, errors[k])
        assert "Traceback" not in errors[k]
    for a in answers:
        np.testing.assert_allclose(a, want, rtol=RTOL)
    status, answer = http_bytes(server.http_url, b"GIF89a-but-not-really")
    assert status == 400 and "input IMAGE_BYTES[0]: " in answer["error"], answer
    status, answer = http_bytes(server.http_url, eps)
    assert status == 400 and "input IMAGE_BYTES[0]: format EPS (by its header) is not accepted" in answer["error"]


def test_bad_arrays_and_bad_requests_are_named(server):
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    h, w = tu.INPUT_HW

    def error(inputs):
        with th.InferenceServerClient(server.http_url) as c:
            with pytest.raises(InferenceServerException) as e:
                c.infer("exdd", inputs)
        return str(e.value)

    def inp(name, data, dtype):
        i = th.InferInput(name, list(data.shape), dtype)
        i.set_data_from_numpy(data)
        return i

    rgba = np.zeros((1, 20, 30, 4), np.uint8)
    assert "unexpected shape for input 'IMAGE'" in error([inp("IMAGE", rgba, "UINT8")])
    assert "unexpected shape for input 'IMAGE'" in error([inp("IMAGE", np.zeros((1, 20, 30), np.uint8), "UINT8")])
    assert "expects 'UINT8'" in error([inp("IMAGE", np.zeros((1, 20, 30, 3), np.float32), "FP32")])
    assert "input IMAGE[0]: empty image (0x30 HxW)" in error([inp("IMAGE", np.zeros((1, 0, 30, 3), np.uint8), "UINT8")])
    both = [
        inp("IMAGE", np.zeros((1, h, w, 3), np.uint8), "UINT8"),
        inp("IMAGE_BYTES", np.array([[b"x"]], dtype=object), "BYTES"),
    ]
    assert "give input IMAGE or input IMAGE_BYTES, not both" in error(both)
    assert "0 inputs" in error([])


def test_client_score_send_bytes_keeps_going_past_a_bad_file(server, pictures, tmp_path):
    """One undecodable file in a batch of encoded files is its own error row (named, with the server's reason);
    the others of the batch are scored."""
    d = tmp_path / "mixed"
    d.mkdir()
    for n in ("tall.png", "wide.jpg"):
        (d / n).write_bytes(open(pictures[n], "rb").read())
    (d / "broken.png").write_bytes(open(pictures["tall.png"], "rb").read()[:300])
    Image.open(pictures["wide.jpg"]).save(d / "postscript.png", "EPS")  # a real EPS named .png
    out = tmp_path / "m.jsonl"
    p = score_cli(
        str(d), "--out", str(out), "--url", server.grpc_url, "--send", "bytes", "--heatmaps", str(tmp_path / "heat")
    )
    assert p.returncode == 1 and "scored: 2, failed: 2, warnings: 1," in p.stdout, p.stdout + p.stderr
    rows = {r["path"]: r for r in read_rows(str(out))}
    broken = rows[str(d / "broken.png")]
    assert broken["score"] is None and str(d / "broken.png") in broken["error"]
    assert "input IMAGE_BYTES[0]: corrupt or truncated image" in broken["error"] and broken["error_kind"] == "input"
    eps = rows[str(d / "postscript.png")]
    assert "input IMAGE_BYTES[0]: format EPS (by its header) is not accepted" in eps["error"], eps
    assert eps["error_kind"] == "input"  # the server said invalid input: a bad file, never retried
    for n in ("tall.png", "wide.jpg"):
        r = rows[str(d / n)]
        assert r["error"] is None and r["heatmap"] and open(r["heatmap"], "rb").read(4) == b"\x89PNG"


def test_bench_sends_bytes_and_raw_arrays_and_writes_their_perf_analyzer_data(server, pictures, tmp_path):
    import base64

    d = tmp_path / "bench"
    d.mkdir()
    blob = open(pictures["tall.png"], "rb").read()
    (d / "a.png").write_bytes(blob)
    array_bytes = tu.INPUT_HW[0] * tu.INPUT_HW[1] * 3
    for send, per_image in (("bytes", len(blob)), ("raw", 700 * 250 * 3), ("array", array_bytes)):
        out, pa = tmp_path / f"{send}.json", tmp_path / f"{send}-pa.json"
        p = subprocess.run(
            EXDD
            + [
                "client",
                "bench",
                "--url",
                server.grpc_url,
                "--images",
                str(d),
                "--send",
                send,
                "--batch-sizes",
                "2",
                "--concurrency",
                "1",
                "--requests",
                "2",
                "--out",
                str(out),
                "--perf-analyzer-data",
                str(pa),
            ],
            capture_output=True,
            text=True,
        )
        assert p.returncode == 0, p.stderr
        result = json.load(open(out))
        assert result["send"] == send and [r["bytes_per_image"] for r in result["rows"]] == [per_image]
        data = json.load(open(pa))["data"][0]
        if send == "bytes":
            assert base64.b64decode(data["IMAGE_BYTES"]["b64"]) == blob and data["IMAGE_BYTES"]["shape"] == [1]
        else:
            assert data["IMAGE"]["shape"] == ([700, 250, 3] if send == "raw" else [*tu.INPUT_HW, 3])
    p = subprocess.run(
        EXDD + ["client", "bench", "--url", server.grpc_url, "--send", "bytes"], capture_output=True, text=True
    )
    assert p.returncode != 0 and "--send bytes needs --images" in p.stderr
