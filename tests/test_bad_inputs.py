"""Every awkward file gets a result or a clear per-file error; the decompression bomb is refused."""
from __future__ import annotations

import os
import resource

import pytest

import corpus
from exdd.images import ImageReadError, read_image


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, corpus.make(root)


def test_reader_answers_every_file(bad):
    root, expect = bad
    for name, want in expect.items():
        path = str(root / name)
        try:
            img = read_image(path, (64, 32))
            got = "ok"
            assert img.shape == (64, 32, 3) and img.dtype.name == "uint8"
        except ImageReadError as e:
            got = "error"
            assert path in str(e), "the error names the file"
        assert want in (got, "either"), f"{name}: {got}"


def test_bomb_refused_before_decoding(bad):
    root, _ = bad
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageReadError, match="decompression bomb|exceeds the limit"):
        read_image(str(root / "bomb.png"))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, "900 Mpx were never allocated"


def test_offline_evaluate_answers_every_file(bad, tiny_banks, tmp_path):
    """A folder of awkward files as a test split: results for the readable, named errors for the rest."""
    import json
    from conftest import run_exdd
    root, expect = bad
    out = tmp_path / "r.json"
    p = run_exdd("offline", "evaluate", str(root), "--banks", str(tiny_banks), "--out", str(out),
                 "--layout", "folder", "--no-pixel")
    r = json.loads(out.read_text())
    scored = {os.path.relpath(i["path"], root) for i in r["images"]}
    failed = {os.path.relpath(e["path"], root) for e in r["errors"]}
    assert scored | failed == set(expect) and not scored & failed
    assert {k for k, v in expect.items() if v == "ok"} <= scored
    assert {k for k, v in expect.items() if v == "error"} <= failed
    assert "Traceback" not in p.stderr


def test_input_warning_names_far_smaller_and_distorted_images_only():
    from exdd.images import input_warning
    assert input_warning((632, 224), (632, 224)) is None
    assert input_warning((2000, 700), (632, 224)) is None                 # shrunk, same shape: fine
    assert input_warning((160, 56), (632, 224)) is None                   # enlarged 3.95x: still fine
    assert "enlarged 4.05x" in input_warning((156, 56), (632, 224))
    assert "aspect ratio W/H 2.46" in input_warning((460, 1130), (632, 224))    # a wide part in a tall model
    assert input_warning((460, 1130), (320, 784)) is None
