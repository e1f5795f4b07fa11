"""Incremental bank updates: continued k-center, extended neighbours, `exdd offline update` end to end."""

import json
import os
import shutil

import numpy as np
import pytest
import tiny_world
from conftest import TINY_HW, run_exdd

from exdd_scoring import MODES, Scorer, load_banks
from exdd_scoring.bank import sha256_file


def _gen(root, seed, n_normal, n_defect):
    from exdd.offline.surfaces import generate

    return generate(
        str(root),
        n_train_normal=n_normal,
        n_train_defect=n_defect,
        n_test_normal=1,
        n_test_defect=1,
        size_hw=tiny_world.HW,
        seed=seed,
    )


def _scores(bank_dir, image_paths):
    import torch

    from exdd.images import read_image
    from exdd.offline.features import build_extractor

    model, info = build_extractor(tiny_world.WEIGHTS, tiny_world.D, 0, TINY_HW)
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

    generate(
        str(tmp_path / "new"),
        n_train_normal=3,
        n_train_defect=0,
        n_test_normal=1,
        n_test_defect=0,
        size_hw=tiny_world.HW,
        surface_kind="tile",
        seed=5,
    )
    taught = sorted(str(p) for p in (tmp_path / "new" / "train").glob("*.png") if not p.stem.endswith("_GT"))
    unseen = [str(p) for p in (tmp_path / "new" / "test").glob("*.png") if not p.stem.endswith("_GT")]
    before = _scores(str(tiny_banks), taught + unseen)
    out = tmp_path / "v2"
    p = run_exdd(
        "offline",
        "update",
        str(tiny_banks),
        "--normal",
        str(tmp_path / "new" / "train"),
        "--out",
        str(out),
        "--note",
        "line 3 new supplier",
    )
    parent = json.loads((tiny_banks / "manifest.json").read_text())
    n0 = parent["coreset"]["negative"]["size"]
    assert f"negative: {n0} ->" in p.stdout and "threshold kept from the parent" in p.stdout
    m = json.loads((out / "manifest.json").read_text())
    rec = m["updates"][-1]
    assert m["parent"]["manifest_sha256"] == sha256_file(str(tiny_banks / "manifest.json"))
    assert rec["added"]["normal"] == [os.path.abspath(t) for t in taught] and rec["added"]["defect"] == []
    assert rec["note"] == "line 3 new supplier" and rec["at"] == m["created"]
    neg = m["coreset"]["negative"]
    assert neg["patches"] == parent["coreset"]["negative"]["patches"] + 3 * 128
    assert neg["size"] == rec["negative"]["size_after"] > n0
    assert neg["radius"] == pytest.approx(max(parent["coreset"]["negative"]["radius"], neg["added_radius"]))
    assert neg["added_radius"] <= parent["coreset"]["negative"]["radius"] + 1e-5  # never grows
    assert m["threshold"]["values"] == parent["threshold"]["values"]
    assert m["coreset"]["positive"] == parent["coreset"]["positive"]
    banks = load_banks(str(out))  # checksums and shapes verify
    np.testing.assert_array_equal(banks.negative.vectors[:n0], load_banks(str(tiny_banks)).negative.vectors)
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
    _gen(tmp_path / "line", 11, 2, 2)
    imgs = sorted(str(p) for p in (tmp_path / "line" / "train").glob("*.png") if not p.stem.endswith("_GT"))
    labels = {
        p: int(np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(p[:-4] + "_GT.png")).max() > 0) for p in imgs
    }
    normal = [p for p in imgs if labels[p] == 0]
    defect = [p for p in imgs if labels[p] == 1]
    lone = tmp_path / "nomask.png"
    shutil.copy(defect[1], lone)
    rows = [
        {"path": normal[0], "score": 9.0, "verdict": "false_alarm"},
        {"path": normal[1], "score": 1.0, "verdict": ""},  # not reviewed: skipped
        {"path": defect[0], "score": 5.0, "verdict": "defect"},
        {"path": str(lone), "score": 5.0, "verdict": "defect"},  # no mask: recorded, skipped
        {"path": defect[1], "score": 5.0, "verdict": "maybe"},
    ]  # unknown verdict: recorded
    res = tmp_path / "results.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "v2"
    p = run_exdd(
        "offline",
        "update",
        str(tiny_banks),
        "--from-results",
        str(res),
        "--defect",
        defect[1],
        "--defect",
        str(lone),
        "--out",
        str(out),
    )
    m = json.loads((out / "manifest.json").read_text())
    parent = json.loads((tiny_banks / "manifest.json").read_text())
    rec = m["updates"][-1]
    assert rec["added"] == {"normal": [normal[0]], "defect": [defect[1], defect[0]]}
    assert m["coreset"]["positive"]["size"] >= parent["coreset"]["positive"]["size"]
    assert m["coreset"]["positive"]["patches"] > parent["coreset"]["positive"]["patches"]
    errs = " ".join(e["error"] for e in rec["errors"])
    assert "without a mask" in errs and "'maybe'" in errs and "Traceback" not in p.stderr
    assert m["sources"]["defect_images"] == parent["sources"]["defect_images"] + 2
    assert sum("without a mask" in e["error"] for e in rec["errors"]) == 2  # --defect and the verdict row
    # a results file without the column is a clear error
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"path": normal[0], "score": 1.0}) + "\n")
    p = run_exdd(
        "offline", "update", str(tiny_banks), "--from-results", str(bad), "--out", str(tmp_path / "x"), check=False
    )
    assert p.returncode != 0 and "no column 'verdict'" in p.stderr and "Traceback" not in p.stderr


def test_update_recalibrates_on_the_parent_holdout(tiny_dataset, tiny_banks, tmp_path):
    _gen(tmp_path / "more", 21, 2, 0)
    out = tmp_path / "v2"
    p = run_exdd(
        "offline",
        "update",
        str(tiny_banks),
        "--normal",
        str(tmp_path / "more" / "train"),
        "--calibrate",
        str(tiny_dataset),
        "--out",
        str(out),
    )
    m = json.loads((out / "manifest.json").read_text())
    assert (
        m["updates"][-1]["threshold"]
        == "recalibrated on 2 held-out images (not on the cross-fitted defects a build uses)"
    )
    assert m["threshold"]["calibrated"]["images"] == 2 and set(m["threshold"]["values"]) == set(MODES)
    # a wrong held-out fraction does not reproduce the parent's split: refused
    p = run_exdd(
        "offline",
        "update",
        str(tiny_banks),
        "--normal",
        str(tmp_path / "more" / "train"),
        "--calibrate",
        str(tiny_dataset),
        "--holdout",
        "0.5",
        "--out",
        str(tmp_path / "v3"),
        check=False,
    )
    assert p.returncode != 0 and "not the same split" in p.stderr
    # never over the parent
    p = run_exdd(
        "offline",
        "update",
        str(tiny_banks),
        "--normal",
        str(tmp_path / "more" / "train"),
        "--out",
        str(tiny_banks),
        check=False,
    )
    assert p.returncode != 0 and "new directory" in p.stderr and "Traceback" not in p.stderr
