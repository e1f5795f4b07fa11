"""Incremental bank updates: continued k-center, extended neighbours, `exdd offline update` end to end."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import TINY_HW, run_exdd
from exdd.offline.coreset import coverage_radius, extend_kcenter, greedy_kcenter
from exdd.offline.update import extend_neighbors
from exdd_scoring import Bank, Scorer, load_banks
from exdd_scoring.bank import sha256_file
from exdd_scoring.knn import bank_neighbors
from exdd_scoring import MODES


def test_extend_kcenter_never_grows_the_radius():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2000, 8)).astype(np.float32)
    cs = greedy_kcenter(a, 60)
    r0 = coverage_radius(a, a[cs.indices])
    # new rows: the same distribution plus a far cluster the old centres do not cover
    b = np.concatenate([rng.standard_normal((500, 8)), rng.standard_normal((50, 8)) * 0.3 + 9.0]).astype(np.float32)
    ext = extend_kcenter(a[cs.indices], b, min_picks=5, radius=r0)
    centres = np.concatenate([a[cs.indices], b[ext.indices]])
    assert len(ext.indices) >= 5
    assert ext.radius <= r0 + 1e-5
    assert coverage_radius(np.concatenate([a, b]), centres) <= r0 + 1e-4
    assert ext.radius == pytest.approx(coverage_radius(b, centres), rel=1e-4, abs=1e-6)
    assert (ext.indices >= 500).any()                 # the uncovered cluster got centres
    # already covered rows with no minimum: nothing to add
    none = extend_kcenter(a[cs.indices], a[:100], min_picks=0, radius=r0)
    assert len(none.indices) == 0 and none.radius <= r0 + 1e-5
    # min_picks above what coverage needs: exactly min_picks, farthest first
    more = extend_kcenter(a[cs.indices], b[:500], min_picks=40, radius=r0)
    assert len(more.indices) == 40 and len(set(more.indices.tolist())) == 40


def test_chunked_extend_keeps_the_radius_and_the_minimum():
    """Past chunk_rows the continued greedy runs per chunk: still >= min_picks, radius never grows, bound holds."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((3000, 8)).astype(np.float32)
    cs = greedy_kcenter(a, 80)
    r0 = coverage_radius(a, a[cs.indices])
    # four chunks; only the last holds a far cluster the old centres miss
    # (the cluster needs more centres than the chunk's share of min_picks: the merge must keep them all)
    b = np.concatenate([rng.standard_normal((1500, 8)), rng.standard_normal((100, 8)) + 9.0]).astype(np.float32)
    ext = extend_kcenter(a[cs.indices], b, min_picks=5, radius=r0, chunk_rows=400)
    assert ext.method.startswith("extend-chunked") and ext.radius_is_bound
    centres = np.concatenate([a[cs.indices], b[ext.indices]])
    true = coverage_radius(b, centres)
    assert len(ext.indices) >= 5 and len(set(ext.indices.tolist())) == len(ext.indices)
    assert true <= ext.radius + 1e-5 <= r0 + 2e-5
    assert (ext.indices >= 1500).any()
    # one chunk: the exact continued greedy
    exact = extend_kcenter(a[cs.indices], b, min_picks=30, radius=r0, chunk_rows=10_000)
    assert exact.method == "extend" and not exact.radius_is_bound


def test_extend_neighbors_matches_full_recomputation():
    rng = np.random.default_rng(3)
    old = rng.standard_normal((300, 6)).astype(np.float32)
    new = rng.standard_normal((70, 6)).astype(np.float32)
    for k in (2, 3, 5):
        bank = Bank(old, bank_neighbors(old, k, np))
        got = extend_neighbors(bank, new, k)
        allv = np.concatenate([old, new])
        ref = bank_neighbors(allv, k, np)
        assert got.shape == ref.shape == (370, k - 1)
        dist = lambda nb: np.linalg.norm(allv[nb] - allv[:, None, :], axis=2)  # noqa: E731
        np.testing.assert_allclose(dist(got), dist(ref), rtol=1e-5, atol=1e-5)
        assert not (got == np.arange(370)[:, None]).any()


def _gen(root, seed, n_normal, n_defect):
    from exdd.offline.surfaces import generate
    return generate(str(root), n_train_normal=n_normal, n_train_defect=n_defect, n_test_normal=1, n_test_defect=1,
                    size_hw=(160, 80), seed=seed)


def _scores(bank_dir, image_paths):
    from exdd.offline.features import build_extractor
    from exdd.images import read_image
    import torch
    model, info = build_extractor("random:0", 32, 0, TINY_HW)
    imgs = np.stack([read_image(p, TINY_HW) for p in image_paths])
    with torch.no_grad():
        feats = model(torch.from_numpy(imgs)).numpy()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return Scorer(load_banks(bank_dir, expected_features=info)).score(feats, map_modes=())


def test_update_teaches_new_normals_and_records_lineage(tiny_dataset, tiny_banks, tmp_path):
    # new good parts of another surface kind: far from the bank until taught
    from exdd.offline.surfaces import generate
    new = generate(str(tmp_path / "new"), n_train_normal=3, n_train_defect=0, n_test_normal=1, n_test_defect=0,
                   size_hw=(160, 80), surface_kind="tile", seed=5)
    taught = sorted(str(p) for p in (tmp_path / "new" / "train").glob("*.png") if not p.stem.endswith("_GT"))
    unseen = [str(p) for p in (tmp_path / "new" / "test").glob("*.png") if not p.stem.endswith("_GT")]
    before = _scores(str(tiny_banks), taught + unseen)
    out = tmp_path / "v2"
    p = run_exdd("offline", "update", str(tiny_banks), "--normal", str(tmp_path / "new" / "train"),
                 "--out", str(out), "--note", "line 3 new supplier")
    assert "negative: 40 ->" in p.stdout and "threshold kept from the parent" in p.stdout
    parent = json.loads((tiny_banks / "manifest.json").read_text())
    m = json.loads((out / "manifest.json").read_text())
    rec = m["updates"][-1]
    assert m["parent"]["manifest_sha256"] == sha256_file(str(tiny_banks / "manifest.json"))
    assert rec["added"]["normal"] == [os.path.abspath(t) for t in taught] and rec["added"]["defect"] == []
    assert rec["note"] == "line 3 new supplier" and rec["at"] == m["created"]
    neg = m["coreset"]["negative"]
    assert neg["patches"] == parent["coreset"]["negative"]["patches"] + 3 * 128
    assert neg["size"] == rec["negative"]["size_after"] > 40
    assert neg["radius"] == pytest.approx(max(parent["coreset"]["negative"]["radius"], neg["added_radius"]))
    assert neg["added_radius"] <= parent["coreset"]["negative"]["radius"] + 1e-5   # never grows
    assert m["threshold"]["values"] == parent["threshold"]["values"]
    assert m["coreset"]["positive"] == parent["coreset"]["positive"]
    banks = load_banks(str(out))                       # checksums and shapes verify
    np.testing.assert_array_equal(banks.negative.vectors[:40], load_banks(str(tiny_banks)).negative.vectors)
    after = _scores(str(out), taught + unseen)
    # nearest distances only shrink; the farthest taught patch was picked first, so the worst
    # taught image's peak distance fell, and every taught patch is within the radius now
    peak = lambda r: r.patch_neg.reshape(len(r.s_neg), -1).max(axis=1)  # noqa: E731
    assert (peak(after) <= peak(before) + 1e-5).all()
    assert peak(after)[:3].max() < peak(before)[:3].max()
    assert (peak(after)[:3] <= neg["radius"] + 1e-4).all()
    assert neg["picked"] >= int(np.ceil(0.01 * 3 * 128))
    # a second update extends the history; re-teaching the same images is skipped
    p2 = run_exdd("offline", "update", str(out), "--normal", taught[0], "--out", str(tmp_path / "v3"), check=False)
    assert p2.returncode != 0 and "already taught" in p2.stderr and "nothing to add" in p2.stderr


def test_update_from_results_with_verdicts(tiny_dataset, tiny_banks, tmp_path):
    src = _gen(tmp_path / "line", 11, 2, 2)
    imgs = sorted(str(p) for p in (tmp_path / "line" / "train").glob("*.png") if not p.stem.endswith("_GT"))
    labels = {p: int(np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(p[:-4] + "_GT.png")).max() > 0)
              for p in imgs}
    normal = [p for p in imgs if labels[p] == 0]
    defect = [p for p in imgs if labels[p] == 1]
    lone = tmp_path / "nomask.png"
    shutil.copy(defect[1], lone)
    rows = [{"path": normal[0], "score": 9.0, "verdict": "false_alarm"},
            {"path": normal[1], "score": 1.0, "verdict": ""},               # not reviewed: skipped
            {"path": defect[0], "score": 5.0, "verdict": "defect"},
            {"path": str(lone), "score": 5.0, "verdict": "defect"},          # no mask: recorded, skipped
            {"path": defect[1], "score": 5.0, "verdict": "maybe"}]           # unknown verdict: recorded
    res = tmp_path / "results.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "v2"
    p = run_exdd("offline", "update", str(tiny_banks), "--from-results", str(res), "--defect", defect[1],
                 "--defect", str(lone), "--out", str(out))
    m = json.loads((out / "manifest.json").read_text())
    parent = json.loads((tiny_banks / "manifest.json").read_text())
    rec = m["updates"][-1]
    assert rec["added"] == {"normal": [normal[0]], "defect": [defect[1], defect[0]]}
    assert m["coreset"]["positive"]["size"] >= parent["coreset"]["positive"]["size"]
    assert m["coreset"]["positive"]["patches"] > parent["coreset"]["positive"]["patches"]
    errs = " ".join(e["error"] for e in rec["errors"])
    assert "without a mask" in errs and "'maybe'" in errs and "Traceback" not in p.stderr
    assert m["sources"]["defect_images"] == parent["sources"]["defect_images"] + 2
    assert sum("without a mask" in e["error"] for e in rec["errors"]) == 2      # --defect and the verdict row
    # a results file without the column is a clear error
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"path": normal[0], "score": 1.0}) + "\n")
    p = run_exdd("offline", "update", str(tiny_banks), "--from-results", str(bad), "--out", str(tmp_path / "x"),
                 check=False)
    assert p.returncode != 0 and "no column 'verdict'" in p.stderr and "Traceback" not in p.stderr


def test_update_recalibrates_on_the_parent_holdout(tiny_dataset, tiny_banks, tmp_path):
    new = _gen(tmp_path / "more", 21, 2, 0)
    out = tmp_path / "v2"
    p = run_exdd("offline", "update", str(tiny_banks), "--normal", str(tmp_path / "more" / "train"),
                 "--calibrate", str(tiny_dataset), "--out", str(out))
    m = json.loads((out / "manifest.json").read_text())
    assert m["updates"][-1]["threshold"] == "recalibrated on 2 images"
    assert m["threshold"]["calibrated"]["images"] == 2 and set(m["threshold"]["values"]) == set(MODES)
    # a wrong held-out fraction does not reproduce the parent's split: refused
    p = run_exdd("offline", "update", str(tiny_banks), "--normal", str(tmp_path / "more" / "train"),
                 "--calibrate", str(tiny_dataset), "--holdout", "0.5", "--out", str(tmp_path / "v3"), check=False)
    assert p.returncode != 0 and "not the same split" in p.stderr
    # never over the parent
    p = run_exdd("offline", "update", str(tiny_banks), "--normal", str(tmp_path / "more" / "train"),
                 "--out", str(tiny_banks), check=False)
    assert p.returncode != 0 and "new directory" in p.stderr and "Traceback" not in p.stderr
