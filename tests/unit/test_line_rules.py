"""Issue 27's pure rules: ROI resampling, connected regions, verdicts, the review band and confidence calibration,
the positive bank's defect sources. The served and built paths are tested against a real server elsewhere."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest

from exdd.offline.calibrate import fit_confidence, review_band
from exdd_scoring.nearest import DefectSources, SourcesError, majority_class, peak_patches, rows_at
from exdd_scoring.regions import largest_region, largest_regions
from exdd_scoring.roi import RoiError, input_roi, mask_maps, mask_patches, patch_roi
from exdd_scoring.verdict import VERDICTS, area_ok, band, confidence, verdict_codes, verdict_names


def bfs_regions(mask):
    """Reference: every 8-connected region's (area, box) by breadth-first search."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    out = []
    for y in range(h):
        for x in range(w):
            if not mask[y, x] or seen[y, x]:
                continue
            q, pix = deque([(y, x)]), []
            seen[y, x] = True
            while q:
                cy, cx = q.popleft()
                pix.append((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            q.append((ny, nx))
            ys, xs = zip(*pix)
            out.append((len(pix), (min(xs), min(ys), max(xs) + 1, max(ys) + 1)))
    return out


@pytest.mark.parametrize("density", [0.05, 0.3, 0.55, 0.8])
def test_largest_region_matches_a_breadth_first_search(density):
    rng = np.random.default_rng(int(density * 100))
    for _ in range(20):
        mask = rng.random((rng.integers(1, 30), rng.integers(1, 30))) < density
        ref = bfs_regions(mask)
        area, box = largest_region(mask)
        if not ref:
            assert (area, box) == (0, (0, 0, 0, 0))
            continue
        best = max(a for a, _ in ref)
        assert area == best
        assert (area, box) in ref


def test_regions_join_diagonal_neighbours_and_boxes_are_exclusive():
    mask = np.zeros((6, 8), bool)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = True  # one diagonal region of 3
    mask[0, 6:8] = True  # a region of 2
    assert largest_region(mask) == (3, (1, 1, 4, 4))
    maps = np.stack([mask * 2.0, np.zeros((6, 8))]).astype(np.float32)
    areas, boxes = largest_regions(maps, 1.0)
    assert areas.tolist() == [3, 0] and boxes.tolist() == [[1, 1, 4, 4], [0, 0, 0, 0]]


def test_input_roi_samples_the_mask_at_pixel_centres_and_refuses_an_empty_one():
    mask = np.zeros((10, 20), np.uint8)
    mask[:, :10] = 255  # left half inspected
    roi = input_roi(mask, (5, 8))
    assert roi.shape == (5, 8) and roi[:, :4].all() and not roi[:, 4:].any()
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[..., 1] = mask  # a colour mask lit in one channel
    assert (input_roi(rgb, (5, 8)) == roi).all()
    with pytest.raises(RoiError, match="empty"):
        input_roi(np.zeros((10, 20), np.uint8), (5, 8))
    with pytest.raises(RoiError, match="2-D"):
        input_roi(np.zeros(7, np.uint8), (5, 8))


def test_patch_roi_keeps_cells_at_least_half_inside_and_masking_zeroes_outside():
    roi = np.zeros((16, 16), bool)
    roi[:, :12] = True  # cells of 8: column 0 full, column 1 half inside
    assert patch_roi(roi, (2, 2)).tolist() == [[True, True], [True, True]]
    roi[:, 8:12] = False
    roi[:, 8:11] = True  # 3/8 of column 1
    assert patch_roi(roi, (2, 2)).tolist() == [[True, False], [True, False]]
    a = np.ones((2, 4), np.float32)
    assert mask_patches(a, patch_roi(roi, (2, 2))).tolist() == [[1, 0, 1, 0]] * 2
    assert mask_maps(np.ones((1, 16, 16), np.float32), roi).sum() == roi.sum()
    with pytest.raises(RoiError, match="no patch"):
        patch_roi(np.eye(16, dtype=bool), (2, 2))


def test_verdicts_follow_the_band_and_the_area_rule():
    scores = np.array([0.5, 1.0, 1.5, 2.0, 2.5])
    codes = verdict_codes(scores, 1.0, 2.0, area_ok([9, 9, 9, 9, 9], 0, np), np)
    assert verdict_names(codes) == ("ok", "review", "review", "defect", "defect")
    codes = verdict_codes(scores, 1.0, 2.0, area_ok([9, 9, 9, 3, 9], 5, np), np)
    assert verdict_names(codes) == ("ok", "review", "review", "ok", "defect")
    assert verdict_names(verdict_codes(scores, None, None, area_ok([0] * 5, 0, np), np)) == ("review",) * 5
    assert VERDICTS == ("ok", "review", "defect")


def test_the_band_always_contains_the_threshold():
    assert band(1.0, 2.0, 1.5) == (1.0, 2.0)
    assert band(1.0, 2.0, 3.0) == (1.0, 3.0)  # a per-request threshold above T2 widens the band
    assert band(1.0, 2.0, 0.5) == (0.5, 2.0)
    assert band(None, None, 1.5) == (1.5, 1.5)  # banks without a band: ok / defect as IS_DEFECT
    assert band(1.0, 2.0, None) == (1.0, 2.0)


def test_review_band_is_at_one_percent_false_alarms_and_misses():
    rng = np.random.default_rng(0)
    normals, defects = rng.normal(0, 1, 1000), rng.normal(3, 1, 1000)
    scores, labels = np.r_[normals, defects], np.r_[np.zeros(1000), np.ones(1000)]
    b = review_band(scores, labels, 1.5)
    assert (normals >= b["defect_above"]).mean() <= 0.01 and (normals >= b["defect_above"]).mean() > 0.005
    assert (defects < b["ok_below"]).mean() <= 0.01 and (defects < b["ok_below"]).mean() > 0.005
    assert b["ok_below"] < 1.5 < b["defect_above"]
    # classes apart: no review band, both at the threshold
    apart = review_band(np.r_[np.zeros(50), np.full(50, 10.0)], labels[950:1050], 4.0)
    assert apart["ok_below"] == apart["defect_above"] == 4.0 and apart["apart"]
    # no held-out defect: T1 is the threshold
    only = review_band(normals, np.zeros(1000), 1.0)
    assert only["ok_below"] == 1.0 and only["defect_above"] > 2.0
    with pytest.raises(ValueError, match="no held-out"):
        review_band(np.zeros(0), np.zeros(0), None)


def test_confidence_is_calibrated_on_the_holdout_and_unknown_without_it():
    rng = np.random.default_rng(1)
    # scores whose true P(defect | s) is a logistic of asinh(s): the fit recovers it
    s = np.sinh(rng.uniform(-4, 4, 20000))
    p_true = 1 / (1 + np.exp(-(2.0 * np.arcsinh(s) - 1.0)))
    y = (rng.random(s.size) < p_true).astype(int)
    params = fit_confidence(s, y)
    probe = np.sinh(np.linspace(-3, 3, 7))
    got = confidence(probe, params, np)
    want = 1 / (1 + np.exp(-(2.0 * np.arcsinh(probe) - 1.0)))
    assert np.allclose(got, want, atol=0.03)
    assert np.all(np.diff(got) > 0) and got.dtype == np.float32
    assert fit_confidence(s, np.zeros(s.size)) is None
    assert all(math.isnan(v) for v in confidence(probe, None, np))


def test_defect_sources_name_the_image_and_class_of_bank_rows():
    src = DefectSources.of(
        [0, 0, 1, 2, 2], ["train/a.png", "train/b.png", "synthetic:syn/00000.png"], ["crack", "blowhole", "synthetic"]
    )
    kept = src.subset([1, 2, 4])  # a coreset kept rows 1, 2 and 4
    assert kept.lookup(np.array([0, 1, 2, -1])) == (
        ["train/a.png", "train/b.png", "synthetic:syn/00000.png", ""],
        ["crack", "blowhole", "synthetic", ""],
    )
    patch_rows = np.array([[5, 6, 7], [8, 9, 10]])
    peaks = peak_patches(np.array([[[0.1, 0.9, 0.2]], [[0.7, 0.1, 0.2]]]), np)
    assert rows_at(patch_rows, peaks, np).tolist() == [6, 8]
    assert majority_class(["b", "a", "b", "a", "c"]) == "a" and majority_class([]) == ""
    with pytest.raises(SourcesError, match="outside"):
        DefectSources.of([0, 3], ["a", "b"], ["x", "y"])
    with pytest.raises(SourcesError, match="2 images"):
        DefectSources(np.zeros(1, np.int32), np.array(["a", "b"]), np.array(["x"]))


def test_banks_before_issue_27_answer_ok_or_defect_at_the_threshold_with_nothing_made_up():
    from exdd_scoring.answer import answer, check_min_area, parse_min_area

    ans = answer(
        np.array([0.5, 1.5, 2.5]),
        np.zeros(3),
        np.zeros((3, 4)),
        np.array([-1, -1, -1]),
        "dual_bounded",
        1.5,
        None,
        None,
    )
    assert ans.verdict == ("ok", "defect", "defect") and ans.is_defect.tolist() == [False, True, True]
    assert np.isnan(ans.confidence).all() and ans.nearest_source == ("", "", "")
    assert ans.row(0) == {
        "verdict": "ok",
        "confidence": None,
        "area": 0,
        "box": [],
        "nearest_source": "",
        "nearest_class": "",
    }
    assert parse_min_area("12", "request parameter") == 12
    for bad in (-1, 2.5, "x", True):
        with pytest.raises(ValueError, match="min_area"):
            parse_min_area(bad, "request parameter")
    with pytest.raises(ValueError, match="pixel threshold"):
        check_min_area(None, "dual_bounded", 5, "request parameter")
    check_min_area(None, "dual_bounded", 0, "request parameter")  # 0 = off: nothing to measure


def test_the_manifest_line_section_reads_back_and_is_absent_before_version_3():
    from exdd_scoring.line_rules import LineRules

    d = {
        "review": {"dual": {"ok_below": 1.0, "defect_above": 2.0, "detail": {"misses": 0.01}}},
        "confidence": {"dual": {"mean": 1.0, "scale": 0.5, "coef": 2.0, "intercept": -1.0}},
        "pixel_threshold": {"dual": 3.5},
        "min_area": 12,
        "roi": {"sha256": "ab" * 32, "source": "/x/roi.png", "patches_inside": 10, "patches": 20},
    }
    rules = LineRules.from_dict(d, "m.json")
    assert LineRules.from_dict(rules.to_dict(), "m.json") == rules and rules.min_area == 12
    with pytest.raises(ValueError, match=r"review\.dual\.ok_below"):
        LineRules.from_dict({"review": {"dual": {"ok_below": 3.0, "defect_above": 2.0}}}, "m.json")
    with pytest.raises(ValueError, match="min_area"):
        LineRules.from_dict({"min_area": -1}, "m.json")


def test_update_never_reads_the_models_own_verdict_as_the_operators(tmp_path):
    """Rows written since issue 27 carry the model's verdict in 'verdict': `offline update --from-results` refuses
    that column and takes the operator's from another."""
    import json

    from exdd.datasets import DatasetError
    from exdd.offline.update import verdict_samples

    img = tmp_path / "a.png"
    img.write_bytes(b"not read here")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps(
            {
                "path": str(img),
                "score": 2.0,
                "verdict": "ok",
                "nearest_source": "train/1.png",
                "operator_verdict": "false_alarm",
            }
        )
        + "\n"
    )
    with pytest.raises(DatasetError, match="model's own verdict"):
        verdict_samples(str(rows))
    normals, defects, errors = verdict_samples(str(rows), "operator_verdict")
    assert [s.path for s in normals] == [str(img)] and not defects and not errors
