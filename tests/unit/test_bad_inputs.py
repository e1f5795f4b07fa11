"""Every awkward file gets a result or a clear per-file error; the decompression bomb is refused."""

from __future__ import annotations

import resource

import corpus
import numpy as np
import pytest

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


def test_input_warning_names_far_smaller_and_distorted_images_only():
    from exdd.images import input_warning

    assert input_warning((632, 224), (632, 224)) is None
    assert input_warning((2000, 700), (632, 224)) is None  # shrunk, same shape: fine
    assert input_warning((160, 56), (632, 224)) is None  # enlarged 3.95x: still fine
    assert "enlarged 4.05x" in input_warning((156, 56), (632, 224))
    assert "aspect ratio W/H 2.46" in input_warning((460, 1130), (632, 224))  # a wide part in a tall model
    assert input_warning((460, 1130), (320, 784)) is None


def test_bit_depth_comes_from_the_mode_not_the_content(tmp_path):
    """Issue 26: a 16-bit picture is scaled by 1/257 whatever its pixels: two frames of a 12-bit camera, one dark
    (all pixels <= 255) and one bright, give the same 8-bit value for the same 16-bit value (was: 1/1 vs 1/257)."""
    from PIL import Image

    from exdd_scoring.picture import decode_rgb

    dark = np.full((20, 10), 200, np.uint16)
    bright = dark.copy()
    bright[0, 0] = 4095
    got = {}
    for name, arr in (("dark", dark), ("bright", bright)):
        for fmt in ("PNG", "TIFF"):
            path = tmp_path / f"{name}.{fmt.lower()}"
            Image.fromarray(arr).save(path, fmt)
            assert Image.open(path).mode == "I;16"
            got[name, fmt] = read_image(str(path))
            np.testing.assert_array_equal(decode_rgb(path.read_bytes(), "x"), got[name, fmt])  # the server's decode
    for k, img in got.items():
        assert img[5, 5].tolist() == [1, 1, 1], k  # 200 / 257 rounds to 1, never 200
    assert got["bright", "PNG"][0, 0].tolist() == [16, 16, 16]  # 4095 / 257 = 15.9
    full = tmp_path / "full.png"
    Image.fromarray(np.array([[0, 128, 129, 32896, 65535]], np.uint16)).save(full)
    assert read_image(str(full))[0, :, 0].tolist() == [0, 0, 1, 128, 255]


@pytest.mark.parametrize("fmt", ["EPS", "PPM", "PCX"])
def test_only_the_listed_raster_formats_are_decoded(fmt, tmp_path):
    """A picture in a format Pillow knows but exdd does not accept (a real EPS: Ghostscript would run on load) is
    refused before any of its plugin's parsing, naming the file and the format; the six accepted ones decode."""
    from PIL import Image

    from exdd_scoring.picture import FORMATS, PictureError, decode_rgb

    img = Image.new("RGB", (12, 8), (10, 20, 30))
    path = tmp_path / "x.png"
    img.save(path, fmt)
    with pytest.raises(ImageReadError, match=f"{path}: format {fmt} \\(by its header\\) is not accepted"):
        read_image(str(path))
    with pytest.raises(PictureError, match=f"input IMAGE_BYTES\\[0\\]: format {fmt} .*PNG, JPEG, BMP, TIFF, WEBP, GIF"):
        decode_rgb(path.read_bytes(), "input IMAGE_BYTES[0]")
    for ok in FORMATS:
        p = tmp_path / f"ok.{ok.lower()}"
        img.save(p, ok)
        assert read_image(str(p)).shape == (8, 12, 3), ok
