"""The scorer against a direct transcription of the formulas, and the map operators."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from exdd_scoring import Bank, BankPair, Scorer
from exdd_scoring.knn import bank_neighbors
from exdd_scoring.manifest import Scoring
from exdd_scoring.resample import bilinear_matrix, upsample_smooth, upsample_smooth_matrices

GRID, OUT, D = (6, 4), (48, 32), 8


def make_pair(rng, n_neg=30, n_pos=12, k=3, with_pos=True):
    neg = rng.standard_normal((n_neg, D)).astype(np.float32)
    pos = (rng.standard_normal((n_pos, D)) + 1.5).astype(np.float32)
    features = {
        "backbone": "test",
        "weights": "random:0",
        "input_size": list(OUT),
        "layers": ["layer2"],
        "grid": list(GRID),
        "projection_seed": 0,
        "projection_sha256": "0" * 64,
        "d": D,
    }
    manifest = {"features": features, "k": k, "threshold": {"values": {"exdd": 1.0}}, "default_mode": "exdd"}
    return BankPair(
        Bank(neg, bank_neighbors(neg, k, np)), Bank(pos, bank_neighbors(pos, k, np)) if with_pos else None, manifest
    )


def transcription(P, M, nbrs):
    """Direct per-image transcription of the issue's formulas for one bank."""
    a = np.array([min(np.linalg.norm(p - m) for m in M) for p in P])
    p_star = int(np.argmax(a))
    s_star = a[p_star]
    m_star = int(np.argmin([np.linalg.norm(P[p_star] - m) for m in M]))
    t = np.sqrt(P.shape[1])
    q = np.exp(s_star / t) / sum(np.exp(np.linalg.norm(P[p_star] - M[j]) / t) for j in nbrs[m_star])
    return a, p_star, s_star, q


def test_scores_match_transcription():
    rng = np.random.default_rng(0)
    pair = make_pair(rng)
    feats = rng.standard_normal((3,) + GRID + (D,)).astype(np.float32) * 1.3
    r = Scorer(pair, eps=1e-6).score(feats)
    for b in range(3):
        P = feats[b].reshape(-1, D)
        a_n, p_n, s_n, q_n = transcription(P, pair.negative.vectors, pair.negative.neighbors)
        a_p, p_p, s_p, q_p = transcription(P, pair.positive.vectors, pair.positive.neighbors)
        s_neg, s_pos = (1 - q_n) * s_n, q_p * s_p
        assert r.s_neg[b] == pytest.approx(s_neg, rel=1e-4)
        assert r.s_pos[b] == pytest.approx(s_pos, rel=1e-4)
        assert r.scores["patchcore"][b] == pytest.approx(s_neg, rel=1e-4)
        assert r.scores["exdd"][b] == pytest.approx(s_neg / (s_pos + 1e-6), rel=1e-4)
        ratio = (a_n / (a_p + 1e-6)).reshape(GRID)
        dual = a_n.reshape(GRID) * ratio  # gamma = 1, the default: a-^2 / a+
        np.testing.assert_allclose(r.patch_neg[b], a_n.reshape(GRID), rtol=1e-4)
        sh, sw = upsample_smooth_matrices(GRID, OUT, 4.0)
        np.testing.assert_allclose(r.maps["exdd"][b], sh @ ratio @ sw.T, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(r.maps["dual"][b], sh @ dual @ sw.T, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(r.maps["fusion"][b], r.maps["dual"][b])
        np.testing.assert_allclose(r.maps["patchcore"][b], sh @ a_n.reshape(GRID) @ sw.T, rtol=1e-3, atol=1e-5)
        assert r.scores["dual"][b] == pytest.approx((sh @ dual @ sw.T).max(), rel=1e-4)
        # no held-out fit in the manifest: the fusion's fixed fallback log s- + log max(ratio map)
        assert r.scores["fusion"][b] == pytest.approx(np.log(s_neg) + np.log((sh @ ratio @ sw.T).max()), rel=1e-4)


def test_gamma_and_fitted_fusion_come_from_the_manifest():
    rng = np.random.default_rng(5)
    pair = make_pair(rng)
    feats = rng.standard_normal((2,) + GRID + (D,)).astype(np.float32) * 1.3
    base = Scorer(pair).score(feats)
    fusion = {"mean": [1.0, 2.0, 3.0], "scale": [2.0, 4.0, 8.0], "coef": [0.5, -1.0, 2.0], "intercept": 0.25}
    pair.manifest = replace(pair.manifest, scoring=Scoring.from_dict({"gamma": 0.5, "fusion": fusion}, "test"))
    r = Scorer(pair).score(feats)
    sh, sw = upsample_smooth_matrices(GRID, OUT, 4.0)
    for b in range(2):
        a_n, a_p = r.patch_neg[b], r.patch_pos[b]
        assert r.scores["dual"][b] == pytest.approx((sh @ (a_n * np.sqrt(a_n / (a_p + 1e-6))) @ sw.T).max(), rel=1e-4)
        x = np.log([r.s_neg[b], r.maps["exdd"][b].max(), r.s_pos[b]])
        want = (((x - np.array(fusion["mean"])) / np.array(fusion["scale"])) * np.array(fusion["coef"])).sum() + 0.25
        assert r.scores["fusion"][b] == pytest.approx(want, rel=1e-4)
    np.testing.assert_allclose(r.scores["patchcore"], base.scores["patchcore"])


def test_fit_fusion_separates_and_falls_back():
    from exdd_scoring.fusion import FALLBACK, fit_fusion

    rng = np.random.default_rng(6)
    y = np.r_[np.zeros(30), np.ones(12)]
    x = rng.standard_normal((42, 3))
    x[:, 0] += 2.5 * y  # only the first feature is informative
    p = fit_fusion(x, y)
    assert p["fitted"] and p["coef"][0] > 1.0 and abs(p["coef"][0]) > 3 * max(abs(p["coef"][1]), abs(p["coef"][2]))
    assert fit_fusion(x[:34], y[:34]) == FALLBACK  # 4 defective: too few, fixed fallback


def test_unknown_default_mode_is_refused_by_name():
    rng = np.random.default_rng(7)
    pair = make_pair(rng)
    with pytest.raises(ValueError, match="unknown scoring mode 'exdd_peak'"):
        replace(pair.manifest, default_mode="exdd_peak")  # the manifest refuses it, so no Scorer sees it


def test_no_positive_bank_falls_back_to_patchcore():
    rng = np.random.default_rng(1)
    pair = make_pair(rng, with_pos=False)
    with pytest.warns(RuntimeWarning, match="fall back to patchcore"):
        sc = Scorer(pair)
    feats = rng.standard_normal((2,) + GRID + (D,)).astype(np.float32)
    r = sc.score(feats)
    np.testing.assert_array_equal(r.scores["exdd"], r.scores["patchcore"])
    for m in r.scores:
        np.testing.assert_array_equal(r.scores[m], r.scores["patchcore"])
        np.testing.assert_array_equal(r.maps[m], r.maps["patchcore"])


def test_score_returns_a_typed_batch_that_splits_per_request():
    from exdd_scoring import ScoreBatch

    rng = np.random.default_rng(5)
    sc = Scorer(make_pair(rng))
    feats = rng.standard_normal((5,) + GRID + (D,)).astype(np.float32)
    r = sc.score(feats, modes=("exdd", "dual"), map_modes=("dual",))
    assert isinstance(r, ScoreBatch) and len(r) == 5
    assert set(r.scores) == {"exdd", "dual"} and set(r.maps) == {"dual"}
    assert r.patch_neg.shape == (5,) + GRID and r.maps["dual"].shape == (5,) + OUT
    part = r.images(1, 3)  # a request's share of a batched run: every array sliced
    alone = sc.score(feats[1:3], modes=("exdd", "dual"), map_modes=("dual",))
    assert len(part) == 2 and part.evidence is None
    for m in ("exdd", "dual"):
        np.testing.assert_allclose(part.scores[m], alone.scores[m], rtol=1e-5)
    np.testing.assert_allclose(part.maps["dual"], alone.maps["dual"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(part.patch_pos, alone.patch_pos, rtol=1e-5)
    with pytest.raises(AttributeError):
        r.s_neg = None  # frozen


def test_without_map_modes_the_served_map_is_not_built():
    """The default mode's score needs the dual_b01 map; its served map ratio_b is built only when asked for."""
    rng = np.random.default_rng(6)
    sc = Scorer(make_pair(rng))
    feats = rng.standard_normal((3,) + GRID + (D,)).astype(np.float32)
    lean = sc.score(feats, modes=("dual_bounded",), map_modes=())
    full = sc.score(feats, modes=("dual_bounded",), map_modes=("dual_bounded",))
    assert lean.maps == {} and lean.evidence.built_maps == ("dual_b01",)
    assert set(full.evidence.built_maps) == {"dual_b01", "ratio_b"}
    np.testing.assert_array_equal(lean.scores["dual_bounded"], full.scores["dual_bounded"])


def test_bad_features_are_refused():
    rng = np.random.default_rng(2)
    sc = Scorer(make_pair(rng))
    with pytest.raises(ValueError, match="do not match"):
        sc.score(np.zeros((1, 5, 4, D), np.float32))
    bad = np.zeros((1,) + GRID + (D,), np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sc.score(bad)


def test_upsample_matches_torch_and_smoothing_matches_scipy():
    rng = np.random.default_rng(3)
    m = rng.random((5, 7)).astype(np.float32)
    up = torch.nn.functional.interpolate(
        torch.from_numpy(m)[None, None], size=(40, 23), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(bilinear_matrix(40, 5) @ m @ bilinear_matrix(23, 7).T, up, atol=1e-6)
    sh, sw = upsample_smooth_matrices((5, 7), (40, 23), 4.0)
    got = upsample_smooth(m[None], sh, sw, np)[0]
    np.testing.assert_allclose(
        got, gaussian_filter(up.astype(np.float64), 4.0, mode="reflect", truncate=4.0), atol=1e-5
    )


def test_near_zero_positive_distance_keeps_maps_and_metrics_finite():
    """A patch sitting on a positive-bank vector gives a ratio of ~a_neg / eps: maps stay finite (float32)
    through the offline evaluator and every pixel metric is a number (was: float16 overflow -> inf -> nan)."""
    from exdd.datasets import Sample
    from exdd.offline.evaluate import metrics_of, score_features

    rng = np.random.default_rng(3)
    pair = make_pair(rng)
    feats = rng.standard_normal((4,) + GRID + (D,)).astype(np.float32) * 1.3
    feats[1, 2, 1] = pair.positive.vectors[0] * 40.0  # far from normal ...
    pair.positive.vectors[0] *= 40.0  # ... and exactly on a defect vector: a+ = 0
    masks = [np.zeros(OUT, bool) for _ in range(4)]
    masks[1][16:24, 8:16] = True
    masks[3][0:8, 0:8] = True
    samples = [Sample(f"img{i}.png", None, int(m.any()), "test") for i, m in enumerate(masks)]
    scored = score_features([(samples, feats, masks)], 4, Scorer(pair, eps=1e-6), OUT)
    for kind, m in scored.maps.items():
        assert m.dtype == np.float32 and np.isfinite(m).all(), kind
    assert scored.maps["ratio"].max() > 1e5  # beyond float16's 65504: the case that overflowed
    met = metrics_of(scored)
    for mode, v in met.items():
        for key in ("pixel_auroc", "pixel_aupro", "image_auroc"):
            assert np.isfinite(v[key]), (mode, key)


def test_bounded_eps_is_the_positive_banks_own_spacing():
    """eps_b is the median distance of a positive-bank element to its nearest other element (not 1e-6)."""
    from exdd_scoring.scores import bank_scale, bounded_eps

    rng = np.random.default_rng(11)
    pair = make_pair(rng)
    pos = pair.positive.vectors
    d = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
    np.fill_diagonal(d, np.inf)
    want = float(np.median(d.min(axis=1)))
    assert bank_scale(pos, pair.positive.neighbors, np) == pytest.approx(want, rel=1e-5)
    assert Scorer(pair).params["pos_scale"] == pytest.approx(want, rel=1e-5)
    assert bounded_eps(want) == pytest.approx(want)  # EPS_REL = 1
    assert bounded_eps(0.0) == 1e-6  # a one-element bank: the old floor, never zero


def test_an_image_equal_to_a_training_defect_scores_finitely_on_the_bounded_scale():
    """A patch sitting on a positive-bank vector: a+ = 0, so the 1e-6 ratio explodes (a-/1e-6) while the bounded
    maps stay within a-^2 / eps_b, the scale of the banks' own distances."""
    rng = np.random.default_rng(12)
    pair = make_pair(rng)
    feats = rng.standard_normal((2,) + GRID + (D,)).astype(np.float32) * 1.3
    feats[1, 2, 1] = pair.positive.vectors[0]
    from exdd_scoring.scores import RAISE_EPS_REL, bounded_eps

    sc = Scorer(pair)
    ev = sc.evidence(feats)
    eb, er = bounded_eps(sc.params["pos_scale"]), bounded_eps(sc.params["pos_scale"], RAISE_EPS_REL)
    a_n = ev.a_neg[1].reshape(GRID)
    assert ev.a_pos[1].reshape(GRID)[2, 1] == pytest.approx(0.0, abs=1e-3)
    old = ev.patch_map("dual")[1, 2, 1]
    from exdd_scoring.scores import DUAL_EPS_REL

    e01 = bounded_eps(sc.params["pos_scale"], DUAL_EPS_REL)
    for kind, e in (("raise", er), ("dual_b", eb), ("dual_b01", e01)):
        m = ev.patch_map(kind)[1]
        assert np.isfinite(m).all()
        assert m[2, 1] == pytest.approx(a_n[2, 1] ** 2 / e, rel=1e-3)  # a- * a- / (0 + eps)
        assert old > 1e4 * m[2, 1]  # the unbounded scale it replaces
    assert ev.patch_map("ratio_b")[1, 2, 1] == pytest.approx(a_n[2, 1] / eb, rel=1e-3)
    served = sc.score(feats, modes=("dual_bounded", "dual"), map_modes=()).scores  # the default's image score
    assert served["dual_bounded"][1] <= (a_n.max() ** 2 / e01) * (1 + 1e-5)
    assert served["dual"][1] > 100 * served["dual_bounded"][1]


def test_raise_only_keeps_patchcore_evidence_far_from_every_defect():
    """raise never lowers a patch below PatchCore's a-; a patch nearer the normal bank than the defect bank keeps a-
    exactly, one nearer a known defect is amplified by a- / (a+ + eps_b)."""
    rng = np.random.default_rng(13)
    pair = make_pair(rng)
    feats = rng.standard_normal((3,) + GRID + (D,)).astype(np.float32) * 1.3
    feats[2, 0, 0] = pair.positive.vectors[3] + 0.01  # right next to a known defect
    from exdd_scoring.scores import RAISE_EPS_REL, bounded_eps

    sc = Scorer(pair)
    ev = sc.evidence(feats)
    eb = bounded_eps(sc.params["pos_scale"], RAISE_EPS_REL)
    neg, pos, up = ev.patch_map("neg"), ev.a_pos.reshape(ev.patch_map("neg").shape), ev.patch_map("raise")
    far = neg <= pos + eb
    assert far.any() and (~far).any()
    np.testing.assert_array_equal(up[far], neg[far])
    np.testing.assert_allclose(up[~far], neg[~far] ** 2 / (pos[~far] + eb), rtol=1e-5)
    assert (up >= neg).all()
    assert up[2, 0, 0] > 1.2 * neg[2, 0, 0]  # amplified: nearer the defect than any normal


def test_default_mode_serves_the_bounded_dual_score_with_the_bounded_ratio_map():
    """dual_bounded (the default of issue 19): the peak of the smoothed map a-^2/(a+ + 0.1 x the positive bank's
    spacing) and the map a-/(a+ + eps_b) with eps_b that spacing; raise scores the peak of its own map and is never
    below the patchcore map's peak."""
    from exdd_scoring import DEFAULT_MODE
    from exdd_scoring.scores import DUAL_EPS_REL, bounded_eps

    rng = np.random.default_rng(14)
    pair = make_pair(rng)
    feats = rng.standard_normal((2,) + GRID + (D,)).astype(np.float32) * 1.3
    sc = Scorer(pair)
    r = sc.score(feats)
    assert DEFAULT_MODE == "dual_bounded"
    sh, sw = upsample_smooth_matrices(GRID, OUT, 4.0)
    eb = bounded_eps(sc.params["pos_scale"])
    e01 = bounded_eps(sc.params["pos_scale"], DUAL_EPS_REL)
    for b in range(2):
        n, p = r.patch_neg[b], r.patch_pos[b]
        np.testing.assert_allclose(r.maps["dual_bounded"][b], sh @ (n / (p + eb)) @ sw.T, rtol=1e-3, atol=1e-5)
        assert r.scores["dual_bounded"][b] == pytest.approx((sh @ (n * n / (p + e01)) @ sw.T).max(), rel=1e-3)
        np.testing.assert_array_equal(r.maps["dual_ratio"][b], r.maps["dual_bounded"][b])
        assert r.scores["raise"][b] == pytest.approx(r.maps["raise"][b].max(), rel=1e-6)
        assert r.scores["raise"][b] >= r.maps["patchcore"][b].max() * (1 - 1e-6)
    np.testing.assert_array_equal(r.scores["dual_ratio"], r.scores["dual"])


def pooled_transcription(r, b, sc, frac):
    """The issue-25 statistics of image b by hand: smoothed dual_b01 and ratio_b maps, top-k means by sorting."""
    from exdd_scoring.scores import DUAL_EPS_REL, bounded_eps

    sh, sw = upsample_smooth_matrices(GRID, OUT, 4.0)
    n, p = r.patch_neg[b].astype(np.float64), r.patch_pos[b].astype(np.float64)
    e01, eb = bounded_eps(sc.params["pos_scale"], DUAL_EPS_REL), bounded_eps(sc.params["pos_scale"])
    dual, ratio = sh @ (n * n / (p + e01)) @ sw.T, sh @ (n / (p + eb)) @ sw.T
    k = int(np.ceil(frac * dual.size))
    top = lambda m: np.sort(m.ravel())[::-1][:k].mean()  # noqa: E731
    peak = np.unravel_index(np.argmax(n * n / (p + e01)), GRID)
    return {
        "log_dual_peak": np.log(dual.max()),
        "log_dual_topk": np.log(top(dual)),
        "log_ratio_topk": np.log(top(ratio)),
        "log_ratio_mean": np.log(ratio.mean()),
        "ratio_area": (ratio > 1.0).mean(),
        "log_neg_at_peak": np.log(n[peak]),
        "log_pos_at_peak": np.log(p[peak]),
        "dual_topk": top(dual),
        "ratio_topk": top(ratio),
    }


def test_topk_modes_average_the_top_fraction_of_the_smoothed_maps_with_the_manifests_fraction():
    """dual_topk / ratio_topk: the mean of the ceil(topk x pixels) largest pixels of the smoothed dual_b01 / served
    ratio_b map; topk comes from the manifest (default TOPK_FRACTION); both serve the bounded ratio map."""
    from exdd_scoring.scores import TOPK_FRACTION, topk_count

    rng = np.random.default_rng(21)
    pair = make_pair(rng)
    feats = rng.standard_normal((3,) + GRID + (D,)).astype(np.float32) * 1.3
    for frac in (TOPK_FRACTION, 0.2):
        pair.manifest = replace(pair.manifest, scoring=replace(pair.manifest.scoring, topk=frac))
        sc = Scorer(pair)
        r = sc.score(feats, modes=("dual_topk", "ratio_topk", "dual_bounded"))
        for b in range(3):
            want = pooled_transcription(r, b, sc, frac)
            assert r.scores["dual_topk"][b] == pytest.approx(want["dual_topk"], rel=1e-4)
            assert r.scores["ratio_topk"][b] == pytest.approx(want["ratio_topk"], rel=1e-4)
            assert r.scores["dual_topk"][b] <= r.scores["dual_bounded"][b] * (1 + 1e-6)  # a mean under the peak
            np.testing.assert_array_equal(r.maps["dual_topk"][b], r.maps["dual_bounded"][b])
    assert topk_count(OUT[0] * OUT[1], TOPK_FRACTION) == 16 and topk_count(10, 1e-9) == 1
    with pytest.raises(ValueError, match="top-k fraction"):
        topk_count(10, 0.0)


def test_head_scores_its_manifest_model_over_pooled_statistics_and_falls_back_to_log_topk():
    """Without a fitted head (every manifest before issue 25) the head serves log(dual_topk); with one, the logistic
    model's log-odds over the named statistics, each as transcribed by hand."""
    from exdd_scoring.scores import HEAD_FEATURES

    rng = np.random.default_rng(22)
    pair = make_pair(rng)
    feats = rng.standard_normal((3,) + GRID + (D,)).astype(np.float32) * 1.3
    feats[2, 1, 1] = pair.positive.vectors[2] + 0.05  # one image near a known defect
    sc = Scorer(pair)
    r = sc.score(feats, modes=("head", "dual_topk"))
    np.testing.assert_allclose(r.scores["head"], np.log(r.scores["dual_topk"]), rtol=1e-5)
    head = {
        "features": list(HEAD_FEATURES),
        "mean": [0.1 * i for i in range(7)],
        "scale": [1.0 + i for i in range(7)],
        "coef": [0.5, -1.0, 2.0, 0.3, 4.0, -0.7, 1.1],
        "intercept": -0.25,
        "cv_auroc": 0.9,
        "folds": 5,
    }
    pair.manifest = replace(pair.manifest, scoring=Scoring.from_dict({"head": head}, "test"))
    sc = Scorer(pair)
    r = sc.score(feats, modes=("head",))
    for b in range(3):
        want = pooled_transcription(r, b, sc, sc.params["topk"])
        x = np.array([want[f] for f in HEAD_FEATURES])
        logit = (((x - np.array(head["mean"])) / np.array(head["scale"])) * np.array(head["coef"])).sum() - 0.25
        assert r.scores["head"][b] == pytest.approx(logit, rel=1e-4, abs=1e-4)


def test_fit_head_cross_validates_and_falls_back_with_too_few_defective_images():
    """fit_head: an informative statistic gets the weight and a high cross-validated AUROC; fewer than
    HEAD_MIN_DEFECTIVE defective images: the fixed fallback, its note saying how many there were."""
    from exdd.offline.head import HEAD_MIN_DEFECTIVE, fit_head
    from exdd_scoring.manifest import Fusion
    from exdd_scoring.scores import HEAD_FALLBACK, HEAD_FEATURES

    rng = np.random.default_rng(23)
    y = np.r_[np.zeros(20), np.ones(15)].astype(int)
    x = rng.standard_normal((35, len(HEAD_FEATURES)))
    x[:, 1] += 3.0 * y  # only log_dual_topk tells
    p = fit_head(x, y, seed=0, crossfit=9)
    assert p["fitted"] and p["features"] == list(HEAD_FEATURES) and p["crossfit"] == 9 and p["folds"] == 5
    assert p["cv_auroc"] > 0.9 and p["fallback_cv_auroc"] > 0.9
    assert abs(p["coef"][1]) > 2 * max(abs(c) for i, c in enumerate(p["coef"]) if i != 1)
    assert Fusion.from_dict(p, "test").to_dict() == {k: v for k, v in p.items() if v is not None}
    few = fit_head(x[: 20 + HEAD_MIN_DEFECTIVE - 1], y[: 20 + HEAD_MIN_DEFECTIVE - 1])
    assert not few["fitted"] and few["features"] == HEAD_FALLBACK["features"] and few["coef"] == [1.0]
    assert f"{HEAD_MIN_DEFECTIVE - 1} defective / 20 normal" in few["note"]


def test_crossfit_scores_each_defective_training_image_without_its_own_patches():
    """The leak the cross-fit removes: scored against the full positive bank a defective training image's defect
    patch has a+ = 0 (it IS a bank element); cross-fitted, its fold's bank lacks it, so a+ > 0 at its peak."""
    from exdd.offline.head import crossfit_evidence, crossfit_folds
    from exdd_scoring.scores import HEAD_FEATURES, head_inputs

    rng = np.random.default_rng(24)
    pair = make_pair(rng)
    n = 6
    defects = rng.standard_normal((n,) + GRID + (D,)).astype(np.float32) * 0.3
    sel = np.zeros((n,) + GRID, bool)
    for i in range(n):  # one far defect patch per image, each its own
        defects[i, 3, 2] = rng.standard_normal(D) * 0.5 + 6.0
        sel[i, 3, 2] = True
    bank_of = lambda v: Bank(v.astype(np.float32), bank_neighbors(v.astype(np.float32), 3, np))  # noqa: E731
    full_pair = BankPair(pair.negative, bank_of(defects[sel]), pair.manifest)
    full = np.asarray(head_inputs(Scorer(full_pair).evidence(defects)))
    ev = crossfit_evidence(pair.negative, pair.manifest, defects, sel, None, bank_of, seed=0, folds=3)
    cf = ev.inputs
    pos = HEAD_FEATURES.index("log_pos_at_peak")
    assert (full[:, pos] < np.log(0.05)).all()  # a+ ~ 0 (float32 rounding): leaked
    assert (cf[:, pos] > np.log(0.5)).all()  # cross-fitted: the nearest is another image's
    assert np.bincount(crossfit_folds(n, 0, 3)).tolist() == [2, 2, 2]
    # the same pass scores every mode for the threshold (rule 7): the negative bank's own score is the full pair's,
    # the dual-bank scores are the fold banks' (lower than the leaked full bank's: no a+ ~ 0 at the defect)
    full_scores = Scorer(full_pair).score(defects, map_modes=())
    np.testing.assert_allclose(ev.scores["patchcore"], full_scores.scores["patchcore"], rtol=1e-6)
    assert (ev.scores["dual_bounded"] < np.asarray(full_scores.scores["dual_bounded"])).all() and ev.scored.all()
