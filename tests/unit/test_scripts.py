"""scripts/: every script imports as a module of its kind, and the shared helpers do what the scripts rely on."""

from __future__ import annotations

import importlib
import os
import pkgutil

import pytest
from conftest import TINY_HW

import scripts
from scripts import common, harness


def test_every_script_imports_as_a_module_of_its_kind():
    kinds = {m.name for m in pkgutil.iter_modules(scripts.__path__) if m.ispkg}
    assert kinds == {"benchmarks", "studies", "tools"}
    names = []
    for kind in sorted(kinds):
        pkg = importlib.import_module(f"scripts.{kind}")
        for m in pkgutil.iter_modules(pkg.__path__):
            mod = importlib.import_module(f"scripts.{kind}.{m.name}")
            assert callable(getattr(mod, "main")), f"scripts.{kind}.{m.name} has no main()"
            names.append(m.name)
    assert {"bench_coreset", "sweep_d", "gpu_check", "soak"} <= set(names)


def test_link_subset_links_images_with_their_masks_and_numbers_on_request(tiny_dataset, tmp_path):
    src = tiny_dataset / "train"
    images = sorted(str(p) for p in src.glob("*.png") if not p.name.endswith("_GT.png"))[:3]
    pairs = [(p, common.mask_of(p)) for p in images]
    assert all(m is not None and os.path.isfile(m) for _, m in pairs)
    out = common.link_subset(str(tmp_path / "a" / "train"), pairs)
    assert sorted(os.listdir(out)) == sorted(
        [os.path.basename(p) for p in images] + [os.path.basename(m) for _, m in pairs]
    )
    assert all(os.path.realpath(os.path.join(out, os.path.basename(p))) == os.path.realpath(p) for p in images)
    numbered = common.link_subset(str(tmp_path / "b" / "train"), pairs, numbered=True)
    assert sorted(os.listdir(numbered)) == [
        "00000.png",
        "00000_GT.png",
        "00001.png",
        "00001_GT.png",
        "00002.png",
        "00002_GT.png",
    ]
    assert common.mask_of(str(tmp_path / "none.png")) is None


def test_cache_folder_names_the_dataset_and_input_size():
    assert common.cache_folder("runs/cache", "../shared/data/magnetic_tile/", (632, 224), "train") == os.path.join(
        "runs/cache", "magnetic_tile-632x224", "train"
    )


def test_raw_caches_then_normal_rows_give_the_projected_defect_free_patches(tiny_dataset, tmp_path):
    caches = common.raw_caches(str(tiny_dataset), "random:0", TINY_HW, str(tmp_path), splits=("train",), progress=False)
    c = caches["train"]
    folder = common.cache_folder(str(tmp_path), str(tiny_dataset), TINY_HW, "train")
    assert os.path.isfile(os.path.join(folder, "meta.json"))
    rows = common.normal_rows(folder, 16, 2)
    normal = [i for i in range(len(c.paths)) if c.covers[i].max() == 0]
    grid = c.covers[0].shape
    assert len(normal) >= 2 and rows.shape == (2 * grid[0] * grid[1], 16)


def test_a_raw_cache_finds_an_image_named_through_a_link_or_a_relative_path(tiny_dataset, tmp_path, monkeypatch):
    from exdd.datasets import load_split
    from exdd.offline.features import make_projection

    caches = common.raw_caches(str(tiny_dataset), "random:0", TINY_HW, str(tmp_path), splits=("train",), progress=False)
    c = caches["train"]
    link = tmp_path / "data-link"
    link.symlink_to(tiny_dataset)
    monkeypatch.chdir(tiny_dataset.parent)
    for root in (str(link), os.path.relpath(tiny_dataset)):
        samples = load_split(root, "train")
        assert samples and all(s.path not in c.paths for s in samples)
        rows = [c.row_of(s.path) for s in samples]
        assert rows == [c.paths.index(os.path.realpath(s.path)) for s in samples]
        got = c.featurizer(make_projection(16, 0))(samples, False, None)
        assert [s.path for s in got.samples] == [s.path for s in samples]
        assert got.features.shape[0] == len(samples) and got.features.shape[-1] == 16
    assert c.row_of(str(tmp_path / "absent.png")) is None


def test_exdd_runner_returns_seconds_and_raises_with_stderr(tmp_path):
    assert common.exdd("--help") > 0
    lines = []
    with pytest.raises(RuntimeError, match="offline evaluate"):
        common.exdd("offline", "evaluate", str(tmp_path / "absent"), "--banks", str(tmp_path), log=lines.append)
    assert lines and lines[0].startswith("$ exdd offline evaluate")


def test_peak_rss_is_this_process_in_gib():
    assert 0.01 < common.peak_rss_gb() < 1024


def test_save_json_writes_the_record_whole_into_a_new_folder(tmp_path):
    import json

    path = tmp_path / "new" / "bench.json"
    assert common.save_json(str(path), {"a": [1, 2]}, indent=2) == str(path)
    assert json.loads(path.read_text()) == {"a": [1, 2]} and path.read_text().startswith("{\n  ")
    assert os.listdir(path.parent) == ["bench.json"]  # no temporary file left behind


def test_bench_result_saves_its_provenance_and_the_metrics_where_the_scripts_always_wrote_them(tmp_path):
    import datetime
    import json

    rec = harness.BenchResult("bench_x", {"n": 4}, {"rows": [1, 2], "ips": 1.5})
    path = tmp_path / "new" / "x.json"
    assert rec.save(str(path)) == str(path) and os.listdir(path.parent) == ["x.json"]
    got = json.loads(path.read_text())
    assert list(got)[:5] == ["name", "params", "machine", "commit", "date"]
    assert got["name"] == "bench_x" and got["params"] == {"n": 4} and got["rows"] == [1, 2] and got["ips"] == 1.5
    assert {"cpu", "cores", "memory_gib", "gpu"} <= set(got["machine"]) and got["machine"]["cores"] == os.cpu_count()
    assert got["commit"] == "unknown" or len(got["commit"].split("-")[0]) == 40
    assert datetime.datetime.fromisoformat(got["date"]).tzinfo is not None
    assert harness.metrics_in(got) == {"rows": [1, 2], "ips": 1.5}  # what a continued run (bench_update) reads back
    with pytest.raises(ValueError, match="machine"):
        harness.BenchResult("bench_x", {}, {"machine": "2 vCPU"}).record()


def test_latency_stats_are_the_percentiles_in_ms_of_seconds_and_none_when_empty():
    s = harness.latency_stats([i / 1000 for i in range(1, 101)])  # 1 .. 100 ms
    assert s["n"] == 100 and s["mean_ms"] == pytest.approx(50.5)
    assert (s["p50_ms"], s["p90_ms"], s["p95_ms"], s["p99_ms"]) == pytest.approx((50.5, 90.1, 95.05, 99.01))
    assert harness.latency_stats([]) == {
        "n": 0,
        "mean_ms": None,
        "p50_ms": None,
        "p90_ms": None,
        "p95_ms": None,
        "p99_ms": None,
    }


def test_study_banks_keep_every_row_within_budget_and_evidence_is_the_exact_nearest_per_bank():
    import numpy as np

    from scripts.studies import study_splits as ss

    rng = np.random.default_rng(0)
    neg_rows, pos_rows = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(40, 8)).astype(np.float32)
    neg, pos = ss.make_bank(neg_rows, 1.0, 0), ss.make_bank(pos_rows, 0.1, 1)  # both within MIN_BANK: every row
    assert np.array_equal(neg[0], neg_rows) and np.array_equal(pos[0], pos_rows) and pos[2]["size"] == 40
    feats = rng.normal(size=(5, 4, 8)).astype(np.float32)  # 5 images of 4 patches
    ev = ss.evidence(feats, [4, 0, 2], neg[:2], pos[:2])
    assert ev.keys() == {"a_neg", "i_neg", "nb_neg", "a_pos", "i_pos", "nb_pos"}
    d = np.sqrt(((feats[[4, 0, 2]][:, :, None, :] - pos_rows[None, None]) ** 2).sum(-1))
    np.testing.assert_allclose(ev["a_pos"], d.min(-1), rtol=1e-4, atol=1e-5)
    assert np.array_equal(ev["i_pos"], d.argmin(-1))
    half = ss.bank_evidence(feats, [4, 0, 2], pos[:2], "pos")
    assert all(np.array_equal(half[k], ev[k]) for k in half)  # --reuse-neg recomputes only this half
    assert ev["nb_neg"].shape == (3, ss.K_STUDY)


def test_study_scores_the_pooled_candidates_with_the_served_modes_and_crossfits_without_the_own_fold():
    """study_decision's (and study_image_score's) candidates are the served modes on the study's evidence (same
    scores as the Scorer on the same banks), and study_splits' cross-fitted evidence never finds an image's own defect
    patch."""
    import numpy as np

    from exdd_scoring import Bank, BankPair, Scorer, upsample_smooth_matrices
    from exdd_scoring.scores import HEAD_FEATURES, mode
    from scripts.studies import study_decision as sd
    from scripts.studies import study_splits as ss

    rng = np.random.default_rng(1)
    grid, hw, d, n = (4, 3), (32, 24), 8, 10
    neg = ss.make_bank(rng.normal(size=(200, d)).astype(np.float32), 1.0, 0)
    pos = ss.make_bank((rng.normal(size=(40, d)) + 2.0).astype(np.float32), 1.0, 1)
    feats = (rng.normal(size=(n, 12, d)) * 1.5).astype(np.float32)
    z = {f"test_{k}": v for k, v in ss.evidence(feats, range(n), neg[:2], pos[:2]).items()}
    z.update(test_labels=np.r_[np.zeros(5), np.ones(5)].astype(np.int8), test_ids=np.arange(n, dtype=np.int32))
    meta = {"grid": list(grid), "d": d, "pos": pos[2]}
    s_h, s_w = upsample_smooth_matrices(grid, hw, 4.0)
    head = {
        "features": list(HEAD_FEATURES),
        "mean": [0.0] * 7,
        "scale": [1.0] * 7,
        "coef": [0.3, 0.2, -0.1, 0.4, 1.0, 0.5, -0.6],
        "intercept": 3.0,
    }
    ev = sd.served_evidence(
        sd.SplitEvidence(z, meta, "test", s_h, s_w), pos[2]["nn1_median"], {"topk": 0.1, "head": head}
    )
    features = {
        "backbone": "test",
        "weights": "random:0",
        "input_size": list(hw),
        "layers": ["layer2"],
        "grid": list(grid),
        "projection_seed": 0,
        "projection_sha256": "0" * 64,
        "d": d,
    }
    manifest = {"features": features, "k": 3, "scoring": {"topk": 0.1, "head": head}}
    pair = BankPair(Bank(neg[0], neg[1][:, :2]), Bank(pos[0], pos[1][:, :2]), manifest)  # the served k = 3
    names = ("patchcore", "dual_bounded", "dual_topk", "ratio_topk", "head", "exdd", "dual")
    want = Scorer(pair).score(feats.reshape((n,) + grid + (d,)), map_modes=(), modes=names).scores
    for m in names:
        np.testing.assert_allclose(np.asarray(mode(m).score(ev)), want[m], rtol=1e-4, err_msg=m)
    # the exploratory exponent candidates (dual_b01_g2, dual_topk_g2@f): a manifest's scoring.gamma, as served
    ev2 = sd.served_evidence(
        sd.SplitEvidence(z, meta, "test", s_h, s_w), pos[2]["nn1_median"], {"topk": 0.1, "gamma": 2.0}
    )
    pair2 = BankPair(
        Bank(neg[0], neg[1][:, :2]), Bank(pos[0], pos[1][:, :2]), dict(manifest, scoring={"topk": 0.1, "gamma": 2.0})
    )
    two = ("dual_bounded", "dual_topk")
    want2 = Scorer(pair2).score(feats.reshape((n,) + grid + (d,)), map_modes=(), modes=two).scores
    for m in two:
        np.testing.assert_allclose(np.asarray(mode(m).score(ev2)), want2[m], rtol=1e-4, err_msg=m)
        assert not np.allclose(want2[m], want[m], rtol=1e-3)  # the exponent reaches the score
    # a build's threshold in the study: calibrated on the held-out images' scores, as offline build calibrates
    from exdd.offline.calibrate import threshold

    zh = dict(z, **{"held_" + k[5:]: v for k, v in z.items() if k.startswith("test_")})
    zh["held_labels"] = np.r_[np.zeros(7), np.ones(3)].astype(np.int8)  # other labels than the test images'
    cands = ["patchcore", "dual_b01", "dual_topk@0.05"]
    th = sd.held_thresholds(zh, meta, s_h, s_w, cands)
    _, on_test, _, _ = sd.split_scores(zh, meta, s_h, s_w, cands)
    for c in cands:
        assert th[c] == threshold(on_test[c], zh["held_labels"], "f1", 0.01)["value"], c
    assert sd.agreement(on_test["dual_b01"], on_test["dual_b01"], th["dual_b01"], th["dual_b01"]) == 1.0
    s0 = np.array([0.1, 0.5, 0.9, 0.6])
    assert sd.agreement(s0, s0 + 0.1, 0.55, 0.65) == 1.0  # each build at its own threshold: no flip
    assert sd.agreement(s0, np.array([0.1, 0.7, 0.9, 0.6]), 0.55, 0.65) == 0.5  # images 2 and 4 flip
    assert sd.rank_agreement(s0, s0 * 3.0, 0.55) == 1.0  # one operating point: only the ranking counts
    assert sd.rank_agreement(s0, np.array([0.1, 0.7, 0.9, 0.6]), 0.55) == 0.5  # top 2 {3, 2} vs {3, 4}
    from scripts.studies import study_image_score as sis  # the image-score study's served candidates too

    cands = sis.candidates(sis.Evidence(dict(z, test_rows=np.arange(n)), "test", grid, s_h, s_w, d))
    for study, served in (("patchcore", "patchcore"), ("exdd", "exdd"), ("dual_map_max", "dual")):
        np.testing.assert_allclose(cands[study](), want[served], rtol=1e-4, err_msg=study)
    sel = np.zeros((6, 12), bool)
    sel[:, 4:] = True  # 8 defect patches per image: fold banks of >= 32
    defects = list(range(4, n))
    cf, stats = ss.crossfit_evidence(feats, defects, sel, neg[:2], 1.0, 0)
    assert sorted(cf["ids"].tolist()) == defects and len(stats) == 5
    assert (cf["a_pos"][:, 4:] > 0.3).all()  # its own defect patches are not in its fold's bank
    full = ss.bank_evidence(feats, cf["ids"], ss.make_bank(feats[defects][sel], 1.0, 1)[:2], "pos")
    assert (full["a_pos"][:, 4:] < 0.05).all()  # the full bank holds them (float32 kNN): the leak
    # rule 7 in the study: a served mode's threshold also reads the cross-fitted images, a study-only score does not
    from exdd.offline.calibrate import crossfit_threshold

    zc, mc = dict(zh, **{f"cf_{k}": v for k, v in cf.items()}), dict(meta, cf_pos=stats)
    both = ["dual_b01", "neg_map_max"]
    th2, cfs = sd.held_thresholds(zc, mc, s_h, s_w, both), sd.crossfit_scores(zc, mc, s_h, s_w, ["dual_b01"])
    _, held2, _, _ = sd.split_scores(zc, mc, s_h, s_w, both, key="held")
    assert cfs["dual_b01"].shape == (len(defects),)
    assert (
        th2["dual_b01"]
        == crossfit_threshold(held2["dual_b01"], zh["held_labels"], cfs["dual_b01"], "f1", 0.01)["value"]
    )
    assert th2["neg_map_max"] == threshold(held2["neg_map_max"], zh["held_labels"], "f1", 0.01)["value"]
    assert th2["dual_b01"] != threshold(held2["dual_b01"], zh["held_labels"], "f1", 0.01)["value"]  # cf counted
    assert sd.served_name("dual_b01") == "dual_bounded" and sd.served_name("dual_topk@0.05") == "dual_topk"
    assert sd.served_name("neg_map_max") is None and sd.served_name("dual_topk_g2@0.05") is None


def test_the_served_score_is_replaced_only_by_a_candidate_that_meets_every_condition_of_the_rule():
    from scripts.studies.study_decision import replaces_served

    def cand(diff, low, stab, passes=True):
        per = {s: {"stability": v} for s, v in zip(("a", "b"), stab)}
        return {"pooled_diff": diff, "pooled_ci90": [low, diff + 0.02], "per_set": per, "passes": passes}

    served = cand(0.0, 0.0, (0.74, 0.95))
    vs_served = {
        "served": served,
        "good": cand(-0.005, -0.02, (0.91, 0.5)),  # set b: the served score is stable there already
        "weaker": cand(-0.02, -0.04, (0.95, 0.95)),
        "wide": cand(0.0, -0.03, (0.95, 0.95)),
        "shaky": cand(0.01, -0.01, (0.89, 0.95)),
        "unpassed": cand(0.01, -0.01, (0.95, 0.95)),
    }
    vs_patchcore = {n: {"passes": n != "unpassed"} for n in vs_served}
    got = replaces_served(vs_patchcore, vs_served, "served")
    assert got["good"] == "yes"
    assert got["weaker"].startswith("no: -0.020") and got["wide"].startswith("no: +0.000")
    assert got["shaky"] == "no: stability under 0.9 on a (0.890)"
    assert got["unpassed"] == "no: does not pass against patchcore"
    assert "served" not in got


def test_variants_are_paired_image_by_image_with_the_base_score_asked_for():
    """study_decision.versus: each candidate of the variant minus the base variant's own score, or minus the one
    score --against-image names, on the same splits and bootstrap resamples; other splits are refused."""
    import numpy as np

    from scripts.studies.study_decision import versus

    def study(scores, stab=None):
        split = {"file": "split0-build0.npz", "stability": stab or {}}
        split["image"] = {n: {"point": p, "boot": np.array([p, p + 0.1])} for n, p in scores.items()}
        return [{"set": "s", "splits": [split]}]

    var = study({"new": 0.8, "old": 0.7}, {"new": 0.95, "old": 0.6})
    base = study({"new": 0.75, "old": 0.9})
    same = versus(var, base, "image")
    assert np.isclose(same["new"]["pooled_diff"], 0.05) and np.isclose(same["old"]["pooled_diff"], -0.2)
    cross = versus(var, base, "image", base_name="old")
    assert np.isclose(cross["new"]["pooled_diff"], -0.1) and np.isclose(cross["new"]["per_set"]["s"]["base"], 0.9)
    assert np.allclose(cross["new"]["pooled_ci90"], [-0.1, -0.1])
    assert cross["new"]["per_set"]["s"]["stability"] == 0.95  # the variant's own stability
    peer_only = versus(study({"new": 0.8, "peer": 0.7}, {"new": 0.9}), base, "image", base_name="old")
    assert peer_only["peer"]["per_set"]["s"]["stability"] is None  # a peer run of build 0 only: no stability
    other = study({"new": 0.8})
    other[0]["splits"][0]["file"] = "split1-build0.npz"
    with pytest.raises(SystemExit, match="other splits"):
        versus(var, other, "image")


def test_the_two_stage_score_looks_only_at_the_served_banks_top_patches_and_needs_a_bank_that_holds_the_served_one():
    """Rule 5's C2 (study_decision.two_stage): the candidates are chosen on the served bank's dual map, scored with
    the denser bank's a-, and the top-k mean is taken over them only; with every patch a candidate it is the top-k
    mean of the denser dual map. dense_a_neg refuses a denser evidence whose a- exceeds the served one."""
    import numpy as np

    from exdd_scoring.scores import topk_mean
    from scripts.studies.study_decision import dense_a_neg, two_stage

    rng = np.random.default_rng(3)
    a_neg = rng.uniform(1.0, 2.0, (4, 100))
    a_pos = rng.uniform(0.5, 1.5, (4, 100))
    dense = a_neg * rng.uniform(0.5, 1.0, a_neg.shape)

    def dual(an):
        return an * (an / (a_pos + 0.1)) ** 2

    every = two_stage(a_neg, a_pos, dense, 0.1, 2.0, 1.0, 0.05)
    assert np.allclose(every, topk_mean(dual(dense), 0.05, np), rtol=1e-12)
    got = two_stage(a_neg, a_pos, dense, 0.1, 2.0, 0.1, 0.05)  # 10 candidates, top 5 of them
    for i in range(4):
        cand = np.argsort(dual(a_neg)[i])[-10:]
        assert np.isclose(got[i], np.sort(dual(dense)[i, cand])[-5:].mean(), rtol=1e-12)
    outside = dense.copy()
    low = np.argsort(dual(a_neg)[0])[0]  # the served map's lowest patch of image 0: never a candidate
    outside[0, low] = 100.0  # the largest dense value of all, outside the candidates: not looked at
    assert np.isclose(two_stage(a_neg, a_pos, outside, 0.1, 2.0, 0.1, 0.05)[0], got[0], rtol=1e-12)
    with pytest.raises(ValueError, match="above the candidate fraction"):
        two_stage(a_neg, a_pos, dense, 0.1, 2.0, 0.01, 0.05)
    ids = np.arange(4)
    z = {"test_ids": ids, "test_a_neg": dense.astype(np.float32)}
    assert np.array_equal(dense_a_neg(z, "test", ids, a_neg), dense.astype(np.float32).astype(np.float64))
    with pytest.raises(SystemExit, match="does not hold the served one"):
        dense_a_neg({"test_ids": ids, "test_a_neg": (a_neg + 0.01).astype(np.float32)}, "test", ids, a_neg)
    with pytest.raises(SystemExit, match="other test images"):
        dense_a_neg(z, "test", ids[::-1], a_neg)


def test_rule4_replaces_the_default_only_when_every_clause_holds():
    """study_decision.rule4_verdict applies rule 4 as written: pooled >= -0.01 with the lower end > -0.03, no set
    below -0.03, stability >= 0.9 on every set (a set without it fails), C's map within 0.01 of the default's."""
    from scripts.studies.study_decision import RULE4, rule4_verdict

    def res(diffs, stab=0.95, pooled=(0.0, -0.02)):
        per = {s: {"diff": d, "stability": stab} for s, d in diffs.items()}
        return {"per_set": per, "pooled_diff": pooled[0], "pooled_ci90": [pooled[1], 0.05]}

    ok_img, ok_map = {RULE4[0]: res({"a": 0.01, "b": -0.02})}, {RULE4[1]: res({"a": 0.0, "b": -0.005})}
    v = rule4_verdict(ok_img, ok_map, 2)
    assert v["verdict"] == "replace" and all(x == "yes" for k, x in v.items() if k != "verdict")
    cases = {
        "pooled": ({RULE4[0]: res({"a": 0.0, "b": 0.0}, pooled=(-0.011, -0.02))}, ok_map, 2),
        "every set": ({RULE4[0]: res({"a": 0.05, "b": -0.031})}, ok_map, 2),
        "stability": ({RULE4[0]: res({"a": 0.0, "b": 0.0}, stab=0.899)}, ok_map, 2),
        "map": (ok_img, {RULE4[1]: res({"a": 0.0, "b": -0.011})}, 2),
        "sets": (ok_img, ok_map, 3),
    }
    for clause, args in cases.items():
        got = rule4_verdict(*args)
        assert got["verdict"] == "keep" and got[clause].startswith("no"), clause
    lower = rule4_verdict({RULE4[0]: res({"a": 0.0}, pooled=(0.0, -0.03))}, {RULE4[1]: res({"a": 0.0})}, 1)
    assert lower["pooled"].startswith("no")  # the lower end must be above -0.03, not at it
    unmeasured = rule4_verdict({RULE4[0]: res({"a": 0.0}, stab=None)}, {RULE4[1]: res({"a": 0.0})}, 1)
    assert "not measured" in unmeasured["stability"] and unmeasured["verdict"] == "keep"


def test_a_set_without_a_mapping_file_has_every_image_as_its_own_group(tmp_path):
    """study_splits.groups_of: a new set (rule 4's held-back data) need not have a mapping.csv."""
    from exdd.datasets import Sample
    from scripts.studies.study_splits import groups_of

    samples = [Sample(str(tmp_path / "train" / f"{i}.png"), None, i % 2, "train") for i in range(4)]
    assert groups_of(str(tmp_path), samples) == [os.path.join("train", f"{i}.png") for i in range(4)]


def test_rule6_bagged_threshold_is_deterministic_separates_separable_scores_and_the_rule_needs_both_clauses():
    """threshold_study: T_bag (median of bootstrap F1 optima) is a function of the scores, lies between the classes
    when they are apart, falls back to the build's rule without both classes; weighted_f1 is F1 under weights;
    rule6 keeps today's threshold unless F1 holds and the agreement rises by 0.02 on no set lower."""
    import numpy as np

    from exdd.metrics import confusion
    from exdd.offline.calibrate import threshold
    from scripts.studies.threshold_study import bagged_f1_threshold, rule6, weighted_f1

    rng = np.random.default_rng(0)
    normals, defects = rng.uniform(0.0, 1.0, 30), rng.uniform(2.0, 3.0, 6)
    s, y = np.r_[normals, defects], np.r_[np.zeros(30), np.ones(6)]
    t = bagged_f1_threshold(s, y)
    assert t == bagged_f1_threshold(s, y) and normals.max() < t <= defects.min()
    assert bagged_f1_threshold(normals, np.zeros(30)) == threshold(normals, np.zeros(30), "f1", 0.01)["value"]
    w = np.ones((1, s.size))
    mixed = rng.uniform(0, 1, s.size)
    assert np.isclose(weighted_f1(mixed, y, 0.5, w)[0], confusion(mixed, y, 0.5)["f1"], rtol=1e-12)
    assert np.isclose(weighted_f1(mixed, y, 0.5, np.r_[w, 2 * w])[1], weighted_f1(mixed, y, 0.5, w)[0])

    def res(diffs, ag_f1, ag_bag, pooled=(0.0, -0.01)):
        per = {k: {"diff": d, "agreement": {"f1": ag_f1[k], "bag": ag_bag[k]}} for k, d in diffs.items()}
        pa = {r: float(np.mean([v["agreement"][r] for v in per.values()])) for r in ("f1", "bag")}
        return {"per_set": per, "pooled_diff": pooled[0], "pooled_ci90": [pooled[1], 0.02], "pooled_agreement": pa}

    base = {"a": 0.80, "b": 0.60}
    assert rule6(res({"a": 0.0, "b": 0.0}, base, {"a": 0.82, "b": 0.63}))["verdict"] == "replace"
    assert rule6(res({"a": 0.0, "b": 0.0}, base, {"a": 0.81, "b": 0.62}))["agreement"].startswith("no")  # +0.015
    assert rule6(res({"a": 0.0, "b": 0.0}, base, {"a": 0.79, "b": 0.70}))["agreement"].startswith("no")  # a lower
    assert rule6(res({"a": 0.0, "b": -0.031}, base, {"a": 0.9, "b": 0.9}))["F1 every set"].startswith("no")
    assert rule6(res({"a": 0.0, "b": 0.0}, base, {"a": 0.9, "b": 0.9}, (-0.011, -0.02)))["verdict"] == "keep"


def test_a_peer_run_is_read_only_for_the_same_test_images_and_the_goals_need_every_set(tmp_path):
    """study_decision.peer_split reads scripts/studies/peer_splits.py's record of a split next to the variant's
    folder and refuses one of other test images or other normals; peer_goals holds the served score and map to
    issue 25's margins over the peer on every set."""
    import numpy as np

    from scripts.studies.study_decision import peer_goals, peer_split

    variant = tmp_path / "ksdd1_dev" / "random-d256"
    peer = tmp_path / "ksdd1_dev" / "peer-anomalib"
    variant.mkdir(parents=True)
    peer.mkdir()
    ids = np.array([3, 5, 8], np.int32)
    np.savez(
        peer / "split0-build0.npz",
        scores=np.array([0.1, 0.7, 0.3], np.float32),
        maps=np.zeros((3, 4, 2), np.float32),
        ids=ids,
    )
    (peer / "split0-build0.json").write_text('{"normals": 12}')
    split_file = str(variant / "split0-build0.npz")
    scores, maps = peer_split(str(variant), split_file, "anomalib", ids, 12)
    assert scores.dtype == np.float64 and np.allclose(scores, [0.1, 0.7, 0.3]) and maps.shape == (3, 4, 2)
    assert peer_split(str(variant), split_file, "anomalib", ids, 12, with_maps=False)[1] is None  # scores only
    assert peer_split(str(variant), str(variant / "split0-build1.npz"), "anomalib", ids, 12) is None
    with pytest.raises(SystemExit, match="other test images"):
        peer_split(str(variant), split_file, "anomalib", np.array([3, 5, 9], np.int32), 12)
    with pytest.raises(SystemExit, match="fitted on 12 normals"):
        peer_split(str(variant), split_file, "anomalib", ids, 11)

    def res(name, diffs):
        per = {s: {"diff": d} for s, d in zip(("a", "b"), diffs)}
        return {name: {"pooled_diff": float(np.mean(diffs)), "pooled_ci90": [-0.1, 0.2], "per_set": per}}

    got = peer_goals(res("dual_b01", (0.03, 0.021)), res("ratio_b", (0.2, 0.049)))
    assert got["image"].endswith("reached") and "not" not in got["image"]
    assert got["pixel"].endswith("not reached on b")
