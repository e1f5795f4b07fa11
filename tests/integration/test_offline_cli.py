"""`exdd offline build` / `evaluate` end to end on a tiny generated dataset, and their errors."""

import json
import os
import shutil
from dataclasses import replace

import numpy as np
from conftest import TINY_ARGS, copy_dataset, run_exdd
from PIL import Image

from exdd.datasets import detect_layout, holdout_split, load_split
from exdd_scoring import MODES


def test_build_writes_banks_and_manifest(tiny_banks):
    m = json.loads((tiny_banks / "manifest.json").read_text())
    f = m["features"]
    assert f["weights"] == "random:0" and f["d"] == 16 and f["grid"] == [16, 8] and f["input_size"] == [128, 64]
    assert len(f["projection_sha256"]) == 64 and f["layers"] == ["layer2", "layer3"]
    assert "RANDOM-INIT" in m["weights_note"]
    neg = np.load(tiny_banks / "negative.npy", allow_pickle=False)
    nb = np.load(tiny_banks / "negative_neighbors.npy", allow_pickle=False)
    assert neg.shape == (m["coreset"]["negative"]["size"], 16) and nb.shape == (neg.shape[0], 2)
    # 6 normals, 10% held out -> 5 in the bank, 128 patches each; min-bank 50 > 1% of 640
    assert m["sources"]["normal_images"] == 5 and m["coreset"]["negative"]["patches"] == 5 * 128
    assert neg.shape[0] == 50
    assert m["sources"]["defect_images"] == 2 and m["sources"]["heldout_defect"] == 1
    assert m["coreset"]["positive"]["size"] >= 1
    assert set(m["threshold"]["values"]) == set(MODES)
    assert all(e["sha256"] for e in m["files"].values()) and m["k"] == 3


def test_evaluate_reports_all_modes(tiny_dataset, tiny_banks, tmp_path):
    out = tmp_path / "r.json"
    p = run_exdd("offline", "evaluate", str(tiny_dataset), "--banks", str(tiny_banks), "--out", str(out))
    r = json.loads(out.read_text())
    assert set(r["metrics"]) == set(MODES)
    for v in r["metrics"].values():
        assert 0.0 <= v["image_auroc"] <= 1.0 and 0.0 <= v["pixel_auroc"] <= 1.0 and 0.0 <= v["pixel_aupro"] <= 1.0
        assert "at_threshold" in v
    assert len(r["images"]) == 6 and sum(i["label"] for i in r["images"]) == 3
    assert "patchcore" in p.stdout and "image_auroc" in p.stdout and "random:0" in p.stdout


def test_mismatched_features_are_refused(tiny_dataset, tiny_banks):
    p = run_exdd(
        "offline", "evaluate", str(tiny_dataset), "--banks", str(tiny_banks), "--weights", "random:1", check=False
    )
    assert p.returncode != 0 and "weights: bank has 'random:0', features have 'random:1'" in p.stderr
    assert "Traceback" not in p.stderr


def test_altered_bank_file_is_refused(tiny_dataset, tiny_banks, tmp_path):
    banks = tmp_path / "banks"
    shutil.copytree(tiny_banks, banks)
    with open(banks / "positive.npy", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x01\x02\x03")
    p = run_exdd("offline", "evaluate", str(tiny_dataset), "--banks", str(banks), check=False)
    assert p.returncode != 0 and "positive.npy: checksum mismatch" in p.stderr


def test_corrupt_image_and_wrong_size_mask_are_named_and_skipped(tiny_dataset, tmp_path):
    data = copy_dataset(tiny_dataset, tmp_path / "d")
    (data / "train" / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    held = {s.path for s in holdout_split(load_split(str(data), "train"), 0.1, 0)[1]}
    defect = next(s for s in load_split(str(data), "train") if s.label == 1 and s.path not in held)
    Image.new("L", (7, 7), 255).save(defect.mask)  # a defective image's mask, wrong size
    out = tmp_path / "b"
    p = run_exdd("offline", "build", str(data), "--out", str(out), *TINY_ARGS)
    assert "00001.png: corrupt or truncated image" in p.stderr or "00001.png: not a recognised" in p.stderr
    assert f"{os.path.basename(defect.mask)}: mask is 7x7 (HxW) but its image is" in p.stderr
    m = json.loads((out / "manifest.json").read_text())
    bad = {os.path.basename(e["path"]) for e in m["sources"]["unreadable"]}
    held = {os.path.basename(s.path) for s in holdout_split(load_split(str(data), "train"), 0.1, 0)[1]}
    assert bad == {"00001.png", os.path.basename(defect.path)} - held  # a held-out file's error: not a bank source


def test_empty_positive_bank_falls_back_to_patchcore(tiny_dataset, tmp_path):
    data = copy_dataset(tiny_dataset, tmp_path / "d")
    for s in load_split(str(data), "train"):
        if s.label == 1:
            os.remove(s.path)
            os.remove(s.mask)
    out = tmp_path / "b"
    p = run_exdd("offline", "build", str(data), "--out", str(out), *TINY_ARGS)
    assert "no defect patches for the positive bank" in p.stderr
    res = tmp_path / "r.json"
    p = run_exdd("offline", "evaluate", str(data), "--banks", str(out), "--out", str(res), "--no-pixel")
    assert "fall back to patchcore" in p.stderr
    r = json.loads(res.read_text())
    assert all(i["scores"]["exdd"] == i["scores"]["patchcore"] for i in r["images"])


def test_layouts(tmp_path, tiny_dataset):
    assert detect_layout(str(tiny_dataset)) == "ksdd2"
    mv = tmp_path / "mv"
    for sub in ("train/good", "test/good", "test/scratch", "ground_truth/scratch"):
        (mv / sub).mkdir(parents=True)
    img = Image.new("RGB", (40, 30), (90, 90, 90))
    img.save(mv / "train/good/000.png")
    img.save(mv / "test/good/000.png")
    img.save(mv / "test/scratch/001.png")
    Image.new("L", (40, 30), 255).save(mv / "ground_truth/scratch/001_mask.png")
    assert detect_layout(str(mv)) == "mvtec"
    test = load_split(str(mv), "test")
    assert [(os.path.basename(s.path), s.label, s.kind) for s in test] == [
        ("000.png", 0, "good"),
        ("001.png", 1, "scratch"),
    ]
    assert test[1].mask.endswith("ground_truth/scratch/001_mask.png")
    folder = load_split(str(mv / "test"), "test", "folder")
    assert len(folder) == 2 and all(s.label == -1 for s in folder)


def test_holdout_split_is_seeded_and_stratified(tiny_dataset):
    train = load_split(str(tiny_dataset), "train")
    kept, held = holdout_split(train, 0.25, 0)
    assert len(kept) + len(held) == len(train)
    assert {s.label for s in held} == {0, 1}
    assert [s.path for s in held] == [s.path for s in holdout_split(train, 0.25, 0)[1]]


def test_k_below_two_is_refused(tiny_dataset, tiny_banks, tmp_path):
    """Issue 12, defect 7: --k 1 made every exdd score s_neg / 1e-6; the CLI and the bank loader refuse it."""
    p = run_exdd(
        "offline", "build", str(tiny_dataset), "--out", str(tmp_path / "b"), *TINY_ARGS, "--k", "1", check=False
    )
    assert p.returncode == 2 and "--k" in p.stderr and "1 is not in the range x>=2" in p.stderr
    assert not (tmp_path / "b").exists()
    from exdd_scoring import BankError, load_banks

    bad = copy_dataset(tiny_banks, tmp_path / "banks")
    m = json.loads((bad / "manifest.json").read_text())
    m["k"] = 1
    (bad / "manifest.json").write_text(json.dumps(m))
    import pytest

    with pytest.raises(BankError, match="k = 1"):
        load_banks(str(bad))
    p = run_exdd("offline", "evaluate", str(tiny_dataset), "--banks", str(bad), check=False)
    assert p.returncode == 2 and "k = 1" in p.stderr and "Traceback" not in p.stderr


def test_test_images_copied_from_training_are_found_and_left_out(tiny_dataset, tiny_banks, tmp_path):
    from exdd.datasets import duplicates_across

    ds = copy_dataset(tiny_dataset, tmp_path / "leaky")
    train = load_split(str(ds), "train")
    src = next(s for s in train if s.label == 1)  # a defective training image, renamed into test/
    shutil.copyfile(src.path, ds / "test" / "00900.png")
    shutil.copyfile(src.mask, ds / "test" / "00900_GT.png")
    test = load_split(str(ds), "test")
    assert duplicates_across(test, train) == [(str(ds / "test" / "00900.png"), src.path)]
    assert duplicates_across(train, train) == []  # a file is not its own duplicate
    out = tmp_path / "r.json"
    p = run_exdd("offline", "evaluate", str(ds), "--banks", str(tiny_banks), "--out", str(out), "--no-pixel")
    assert "1 test images are byte-identical to training images" in p.stderr and "left out" in p.stderr
    r = json.loads(out.read_text())
    assert len(r["images"]) == 6 and not any(i["path"].endswith("00900.png") for i in r["images"])
    assert r["duplicates_of_training_images"]["excluded"] is True
    p = run_exdd(
        "offline", "evaluate", str(ds), "--banks", str(tiny_banks), "--out", str(out), "--no-pixel", "--keep-duplicates"
    )
    assert "kept (--keep-duplicates)" in p.stderr and len(json.loads(out.read_text())["images"]) == 7


def test_topk_is_recorded_calibrated_on_and_kept_by_the_stability_rebuild(tiny_dataset, tmp_path):
    """`offline build --topk F` (issue 25, rule 4's candidate C needs 0.05): the manifest's scoring.topk, the
    dual_topk threshold is calibrated on the top-F scores (not the default 1 %'s) of the held-out images and of the
    cross-fitted defective training images (rule 7; each scored here again with the build's own functions), and
    the `--stability` rebuild reads it from the manifest; a fraction outside (0, 1] is refused naming the option."""
    import tiny_world

    from exdd.offline.build import BuildConfig, build_crossfit, defect_patches, score_samples
    from exdd.offline.calibrate import crossfit_threshold
    from exdd.offline.extract import extract
    from exdd.offline.features import bank_extractor
    from exdd.offline.stability import rebuild_plan
    from exdd_scoring import Scorer, load_banks
    from exdd_scoring.provenance import OfflineManifest

    out = tmp_path / "b"
    args = ("--mode", "dual_topk", "--topk", "0.25", "--gamma", "2")
    built = run_exdd("offline", "build", str(tiny_dataset), "--out", str(out), *TINY_ARGS, *args)
    pair = load_banks(str(out), manifest_cls=OfflineManifest)
    m = pair.manifest
    assert (m.scoring.topk, m.scoring.gamma, m.default_mode) == (0.25, 2.0, "dual_topk")
    n_cf = m.threshold.detail["dual_topk"]["crossfit_defects"]
    assert f"held-out + {n_cf} cross-fitted defective images)" in built.stdout  # the build says what calibrated
    assert "threshold[head]: " in built.stdout and "cross-fitted" not in next(
        x for x in built.stdout.splitlines() if x.startswith("threshold[head]")
    )
    kept, held = holdout_split(load_split(str(tiny_dataset), "train"), 0.1, 0)
    model, _ = bank_extractor(str(out), m)
    f = m.features
    ex = extract(held, model, tuple(f.input_size), tuple(f.grid), f.d)
    labels = np.array([s.label for s in ex.samples])
    assert set(labels.tolist()) == {0, 1}
    defects = extract([s for s in kept if s.label == 1], model, tuple(f.input_size), tuple(f.grid), f.d, with_mask=True)
    cfg = BuildConfig(min_size=tiny_world.MIN_BANK, gamma=2.0, topk=0.25, default_mode="dual_topk")
    sel = defect_patches(defects.covers, cfg.min_cover)
    cf = build_crossfit(pair.negative, m, defects.features, sel, None, cfg).rows()
    assert len(defects.samples) >= 2 and cf.scored.size == len(defects.samples)

    def calibrated(topk):
        pair.manifest = replace(m, scoring=replace(m.scoring, topk=topk))
        cfs = build_crossfit(pair.negative, pair.manifest, defects.features, sel, None, cfg).rows()
        got = score_samples(Scorer(pair), ex.features)["dual_topk"]
        return got, crossfit_threshold(got, labels, cfs.scores["dual_topk"], "f1", 0.01)

    got, want = calibrated(0.25)
    detail = m.threshold.detail["dual_topk"]
    assert np.isclose(want["value"], detail["value"], rtol=1e-5)
    assert detail["crossfit_defects"] == len(defects.samples) == want["crossfit_defects"]
    at_default, other = calibrated(0.01)
    assert not np.allclose(at_default, got, rtol=1e-3)  # the fraction matters: 1 % scores are other scores
    assert not np.isclose(other["value"], detail["value"], rtol=1e-3)  # and another threshold
    assert "crossfit_defects" not in m.threshold.detail["head"]  # fitted on those images: held-out only
    assert rebuild_plan(m, "b", str(tiny_dataset), "auto", 16).cfg.topk == 0.25
    p = run_exdd(
        "offline", "build", str(tiny_dataset), "--out", str(tmp_path / "c"), *TINY_ARGS, "--topk", "0", check=False
    )
    assert p.returncode == 2 and "--topk" in p.stderr and "Traceback" not in p.stderr
