"""Issue 25: the build is deterministic in the images. The same image files give the same banks whatever their
names or listing order; the seed only chooses which images are held out; `offline evaluate --stability`."""

import json
import os
import random
import shutil

import pytest
from conftest import TINY_ARGS, run_exdd

from exdd.datasets import HOLDOUT_RULE, holdout_split, legacy_holdout_split, load_split
from exdd_scoring import MODES, read_manifest
from exdd_scoring.provenance import OfflineManifest


def renamed_copy(src, dst):
    """The dataset with every training image renumbered in reverse (its mask follows): other names, other order."""
    shutil.copytree(src, dst)
    train = dst / "train"
    names = sorted(f for f in os.listdir(train) if not f.endswith("_GT.png"))
    for f in names:
        os.rename(train / f, train / ("tmp_" + f))
        os.rename(train / f.replace(".png", "_GT.png"), train / ("tmp_" + f.replace(".png", "_GT.png")))
    for i, f in enumerate(names):
        new = f"{len(names) - 1 - i:05d}"
        os.rename(train / ("tmp_" + f), train / f"{new}.png")
        os.rename(train / ("tmp_" + f.replace(".png", "_GT.png")), train / f"{new}_GT.png")
    return dst


NAMES = "defect_images.npy"  # the positive bank's source images by name (issue 27): provenance, as the dataset path


def arrays(folder):
    return {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder)) if f.endswith(".npy") and f != NAMES}


def manifest_but_provenance(folder):
    m = json.loads((folder / "manifest.json").read_text())
    m.pop("created")
    m["sources"].pop("dataset")
    m["files"].pop(NAMES, None)
    return m


def same_source_images(a, a_root, b, b_root):
    """The two builds' defect source tables name files of the same content, row for row."""
    import numpy as np

    na, nb = np.load(a / NAMES), np.load(b / NAMES)
    return len(na) == len(nb) > 0 and all(
        (a_root / x).read_bytes() == (b_root / y).read_bytes() for x, y in zip(na, nb)
    )


def test_renamed_images_give_byte_identical_banks_and_manifest(tiny_dataset, tiny_banks, tmp_path):
    data = renamed_copy(tiny_dataset, tmp_path / "renamed")
    assert [s.path for s in load_split(str(data), "train")] != [s.path for s in load_split(str(tiny_dataset), "train")]
    out = tmp_path / "b"
    run_exdd("offline", "build", str(data), "--out", str(out), *TINY_ARGS)
    assert arrays(out) == arrays(tiny_banks) and len(arrays(out)) >= 4
    assert manifest_but_provenance(out) == manifest_but_provenance(tiny_banks)
    assert same_source_images(out, data, tiny_banks, tiny_dataset)


def test_the_coreset_does_not_depend_on_the_seed(tiny_dataset, tmp_path):
    """Without a hold-out every seed keeps the same images: the banks are byte-identical (no seeded coreset start)."""
    outs = []
    for seed in (0, 7):
        out = tmp_path / f"s{seed}"
        run_exdd(
            "offline", "build", str(tiny_dataset), "--out", str(out), *TINY_ARGS, "--holdout", "0", "--seed", str(seed)
        )
        outs.append(out)
    assert arrays(outs[0]) == arrays(outs[1])


def test_the_seed_moves_only_which_images_are_held_out(tiny_dataset):
    train = load_split(str(tiny_dataset), "train")
    kept0, held0 = holdout_split(train, 0.25, 0)
    _, held1 = holdout_split(train, 0.25, 1)
    assert {s.path for s in held0} != {s.path for s in held1}
    assert sorted(s.label for s in held0) == sorted(s.label for s in held1)  # same counts per label
    shuffled = train[:]
    random.Random(3).shuffle(shuffled)
    k2, h2 = holdout_split(shuffled, 0.25, 0)  # listing order does not matter
    assert [s.path for s in k2] == [s.path for s in kept0] and [s.path for s in h2] == [s.path for s in held0]


def test_the_manifest_records_the_hold_out_rule_and_update_recalibrates_older_banks_by_theirs(tiny_dataset, tiny_banks):
    from dataclasses import replace

    from exdd.offline.update import heldout_samples

    m = read_manifest(str(tiny_banks), OfflineManifest)
    assert m.sources.heldout_rule == HOLDOUT_RULE and m.sources.heldout_fraction == pytest.approx(0.1)
    train = load_split(str(tiny_dataset), "train")
    assert heldout_samples(str(tiny_dataset), m, 0.1) == holdout_split(train, 0.1, 0)[1]
    old = replace(m, sources=replace(m.sources, heldout_rule=None))  # banks built before issue 25
    assert heldout_samples(str(tiny_dataset), old, 0.1) == legacy_holdout_split(train, 0.1, 0)[1]


def test_evaluate_stability_rebuilds_with_the_next_seed_and_reports_spearman(tiny_dataset, tiny_banks, tmp_path):
    out = tmp_path / "r.json"
    p = run_exdd(
        "offline",
        "evaluate",
        str(tiny_dataset),
        "--banks",
        str(tiny_banks),
        "--stability",
        "--no-pixel",
        "--out",
        str(out),
    )
    lines = dict(x.split(": ", 1) for x in p.stdout.splitlines() if x.startswith("stability["))
    assert set(lines) == {f"stability[{m}]" for m in MODES}
    st = json.loads(out.read_text())["stability"]
    assert st["seeds"] == [0, 1] and st["images"] == 6
    for m in MODES:
        assert -1.0 <= st["spearman"][m] <= 1.0 and lines[f"stability[{m}]"] == f"{st['spearman'][m]:.4f}"
    train = load_split(str(tiny_dataset), "train")
    rel = lambda ss: sorted(os.path.relpath(s.path, str(tiny_dataset)) for s in ss)  # noqa: E731
    assert st["held_out"]["first"] == rel(holdout_split(train, 0.1, 0)[1])
    assert st["held_out"]["second"] == rel(holdout_split(train, 0.1, 1)[1])
    assert st["held_out"]["common"] == len(set(st["held_out"]["first"]) & set(st["held_out"]["second"]))
    manifest = read_manifest(str(tiny_banks), OfflineManifest)
    assert st["banks"]["negative"][0] == manifest.coreset.negative.size
    assert "in common" in p.stdout and "bank sizes negative" in p.stdout
    # the verdicts: each build's own threshold; the first build's verdicts are the results' own
    rows = json.loads(out.read_text())["images"]
    names = [os.path.relpath(r["path"], str(tiny_dataset)) for r in rows]
    agree = {x.split("]")[0][len("agreement[") :]: x for x in p.stdout.splitlines() if x.startswith("agreement[")}
    assert set(st["verdicts"]) == set(manifest.thresholds) == set(agree) and st["verdicts"]
    for m, v in st["verdicts"].items():
        assert v["thresholds"][0] == manifest.thresholds[m] and v["images"] == len(rows)
        assert v["same"] + len(v["flips"]) == len(rows) and set(v["flips"]) <= set(names)
        assert f"{v['same']} of {len(rows)} images get the same IS_DEFECT" in agree[m]
    for r in rows:  # IS_DEFECT of the first build, as the line's verdicts of the results imply it
        is_defect = r["scores"]["dual_bounded"] >= manifest.thresholds["dual_bounded"]
        assert (r["verdict"] != "ok") if is_defect else (r["verdict"] != "defect")


def test_stability_on_other_data_than_the_banks_is_refused(tiny_dataset, tiny_banks, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(tiny_dataset, data)
    for f in ("00000.png", "00000_GT.png"):
        os.remove(data / "train" / f)
    p = run_exdd("offline", "evaluate", str(data), "--banks", str(tiny_banks), "--stability", "--no-pixel", check=False)
    assert p.returncode != 0 and "--stability:" in p.stderr and "not the data the banks were built from" in p.stderr
    assert "Traceback" not in p.stderr
