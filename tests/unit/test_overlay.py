"""Heatmap overlays: shape, colours, contours at the mask boundary, PNG round trip."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from exdd.overlay import GT_COLOR, PRED_COLOR, boundary, colorize, overlay, resize_map, save_png, turbo_lut


def _image(h: int = 40, w: int = 60) -> np.ndarray:
    """A mid-grey test image with a little texture."""
    rng = np.random.default_rng(0)
    return (100 + rng.integers(0, 30, (h, w, 3))).astype(np.uint8)


def test_shape_dtype_and_any_map_size():
    img = _image()
    for amap in (np.zeros((5, 7)), np.ones((40, 60)), np.random.default_rng(1).random((80, 17))):
        out = overlay(img, amap, 0.0, 1.0)
        assert out.shape == img.shape and out.dtype == np.uint8
    gray = overlay(img[:, :, 0], np.zeros((4, 4)), 0, 1)
    assert gray.shape == (40, 60, 3)
    with pytest.raises(ValueError):
        overlay(img, np.zeros((2, 2, 2)), 0, 1)


def test_colors_follow_the_map():
    img = np.full((20, 40, 3), 128, np.uint8)
    amap = np.zeros((20, 40))
    amap[:, 20:] = 1.0
    out = overlay(img, amap, 0.0, 1.0, alpha=1.0).astype(int)
    lut = turbo_lut().astype(int)
    assert (out[5, 5] == lut[0]).all() and (out[5, 35] == lut[-1]).all()
    assert out[5, 35, 0] > out[5, 35, 2] and out[5, 5, 2] > out[5, 5, 0]  # red high, blue low
    half = overlay(img, amap, 0.0, 1.0, alpha=0.5).astype(int)
    assert np.abs(half[5, 35] - (128 + lut[-1]) / 2).max() <= 1
    assert (overlay(img, amap, 0.0, 1.0, alpha=0.0) == img).all()
    # vmin/vmax clip: values beyond them take the end colours; nan is treated as low
    assert (colorize(np.array([[-5.0, 5.0, np.nan]]), 0, 1)[0] == lut[[0, -1, 0]]).all()


def test_map_is_resized_bilinear():
    r = resize_map(np.array([[0.0, 1.0]], dtype=np.float32), (1, 8))
    assert r.shape == (1, 8) and r[0, 0] < 0.1 and r[0, -1] > 0.9 and np.all(np.diff(r[0]) >= 0)


def test_predicted_contour_on_the_threshold_boundary():
    img = np.zeros((30, 30, 3), np.uint8)
    amap = np.zeros((30, 30))
    amap[10:20, 8:22] = 1.0
    out = overlay(img, amap, 0.0, 1.0, threshold=0.5, alpha=0.3)
    is_pred = (out == PRED_COLOR).all(axis=2)
    expected = np.zeros((30, 30), bool)
    expected[10:20, 8:22] = True
    expected[11:19, 9:21] = False
    assert (is_pred == expected).all()
    assert not (overlay(img, amap, 0.0, 1.0, threshold=2.0) == PRED_COLOR).all(axis=2).any()


def test_gt_contour_drawn_and_resized():
    img = np.zeros((40, 40, 3), np.uint8)
    gt = np.zeros((20, 20), bool)
    gt[5:15, 5:15] = True  # half resolution: resized nearest to (40, 40)
    out = overlay(img, np.zeros((4, 4)), 0, 1, gt_mask=gt)
    is_gt = (out == GT_COLOR).all(axis=2)
    assert is_gt[10, 10:30].all() and is_gt[10:30, 29].all()
    assert not is_gt[15:25, 15:25].any() and not is_gt[:9].any()
    both = overlay(img, np.ones((4, 4)), 0, 1, threshold=0.5, gt_mask=np.ones((40, 40), bool))
    assert (both[0, 0] == GT_COLOR).all()  # ground truth drawn over the prediction where they coincide


def test_boundary_thickness():
    m = np.zeros((12, 12), bool)
    m[2:10, 2:10] = True
    assert boundary(m).sum() == 28 and boundary(m, 2).sum() == 28 + 20
    assert not boundary(np.zeros((5, 5), bool)).any()


def test_save_png_round_trip(tmp_path):
    out = overlay(_image(), np.random.default_rng(2).random((8, 8)), 0, 1, threshold=0.7)
    p = save_png(str(tmp_path / "a" / "b.png"), out)
    assert (np.asarray(Image.open(p)) == out).all()
