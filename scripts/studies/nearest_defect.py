"""Issue 27: the class accuracy of the nearest-known-defect rule on magnetic tile (5 labelled defect classes).

The rule the served answer follows: take the image's peak defect patch (the peak of the served map), find the
positive-bank patch nearest to it, and name the class of the training image that patch came from. Measured on the
test split's defective images against the majority class of the training defects.

Two steps, the first cached (extraction is the cost on 2 cores):
  nice -n 10 .venv/bin/python -m scripts.studies.nearest_defect extract --size 256x256 --normals 250
  nice -n 10 .venv/bin/python -m scripts.studies.nearest_defect measure --size 256x256
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import Counter
from typing import Dict

import numpy as np

DATA = "/work/shared/data/magnetic_tile"
WEIGHTS = "/work/shared/weights/wrn50-random0-bncal.safetensors"


def classes_of(root: str) -> Dict[str, str]:
    """mapping.csv: image path relative to the dataset root -> defect type ('good' for normals)."""
    with open(os.path.join(root, "mapping.csv"), newline="") as f:
        return {r["new_image"]: r["defect_type"] for r in csv.DictReader(f)}


def folder(cache: str, size: str) -> str:
    return os.path.join(cache, f"nearest_defect-{size}")


def extract_step(a) -> None:
    import torch

    from exdd.datasets import load_split
    from exdd.offline.extract import extract
    from exdd.offline.features import build_extractor

    torch.set_num_threads(2)
    hw = tuple(int(v) for v in a.size.split("x"))
    out = folder(a.cache, a.size)
    os.makedirs(out, exist_ok=True)
    model, info = build_extractor(a.weights, input_hw=hw)
    train = load_split(DATA, "train")
    test = load_split(DATA, "test")
    normals = [s for s in train if s.label == 0]
    keep = sorted(np.random.default_rng(0).permutation(len(normals))[: a.normals])
    sets = {
        "train_normal": [normals[i] for i in keep],
        "train_defect": [s for s in train if s.label == 1],
        "test_defect": [s for s in test if s.label == 1],
    }
    for name, samples in sets.items():
        if os.path.isfile(os.path.join(out, f"{name}.json")):
            continue
        t0, done = time.time(), [0]

        def progress(n: int) -> None:
            done[0] += n
            if done[0] % 40 < n:
                print(f"{name}: {done[0]}/{len(samples)} {time.time() - t0:.0f}s", file=sys.stderr, flush=True)

        ex = extract(
            samples, model, hw, tuple(info["grid"]), int(info["d"]), batch_size=8, with_mask=True, progress=progress
        )
        np.save(os.path.join(out, f"{name}.features.npy"), ex.features)
        np.save(os.path.join(out, f"{name}.covers.npy"), ex.covers)
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(
                {
                    "paths": [os.path.relpath(s.path, DATA) for s in ex.samples],
                    "features": info,
                    "seconds": time.time() - t0,
                },
                f,
            )
        print(f"{name}: {len(ex.samples)} images in {time.time() - t0:.0f}s", file=sys.stderr, flush=True)


def load(out: str, name: str):
    meta = json.load(open(os.path.join(out, f"{name}.json")))
    return (np.load(os.path.join(out, f"{name}.features.npy")), np.load(os.path.join(out, f"{name}.covers.npy")), meta)


def measure_step(a) -> None:
    from exdd import defaults
    from exdd.offline.build import bank_of, defect_patches, make_bank
    from exdd.offline.coreset import bank_size, chunked_kcenter
    from exdd_scoring import BankPair, Scorer
    from exdd_scoring.nearest import DefectSources, majority_class, peak_patches, rows_at

    out = folder(a.cache, a.size)
    t0 = time.time()
    classes = classes_of(DATA)
    normal, _, meta = load(out, "train_normal")
    tr_f, tr_c, tr_meta = load(out, "train_defect")
    te_f, te_c, te_meta = load(out, "test_defect")
    d = te_f.shape[-1]
    negative, _ = make_bank(
        normal.reshape(-1, d).astype(np.float32),
        defaults.NEG_RATIO,
        defaults.MIN_BANK,
        defaults.K,
        defaults.CHUNK_ROWS,
        defaults.OVERSAMPLE,
    )
    sel = defect_patches(tr_c, defaults.MIN_COVER)  # the build's defect-patch rule
    rows = np.nonzero(sel.reshape(sel.shape[0], -1))[0]  # the source image of every defect patch
    train_classes = [classes[p] for p in tr_meta["paths"]]
    sources = DefectSources.of(rows, tr_meta["paths"], train_classes)
    vectors = tr_f[sel].astype(np.float32)
    manifest = {"features": meta["features"], "k": defaults.K, "default_mode": "dual_bounded"}
    truth = [classes[p] for p in te_meta["paths"]]
    majority = majority_class(train_classes)
    record = {
        "size": a.size,
        "weights": a.weights,
        "normals": int(normal.shape[0]),
        "train_defects": int(tr_f.shape[0]),
        "test_defects": int(te_f.shape[0]),
        "defect_patches": int(vectors.shape[0]),
        "negative_bank": int(negative.size),
        "train_classes": dict(Counter(train_classes)),
        "test_classes": dict(Counter(truth)),
        "majority_class": majority,
        "majority_accuracy": float(np.mean([t == majority for t in truth])),
        "banks": {},
    }
    for name, ratio in (("coreset", defaults.POS_RATIO), ("all", 1.0)):
        keep = bank_size(vectors.shape[0], ratio, defaults.MIN_BANK)
        if keep < vectors.shape[0]:
            cs = chunked_kcenter(vectors, keep, chunk_rows=defaults.CHUNK_ROWS, oversample=defaults.OVERSAMPLE)
            idx = np.sort(cs.indices)
            positive, _ = bank_of(vectors[idx], vectors.shape[0], cs, ratio, defaults.MIN_BANK, defaults.K)
        else:
            idx = np.arange(vectors.shape[0])
            positive = make_bank(vectors, 1.0, defaults.MIN_BANK, defaults.K, defaults.CHUNK_ROWS, defaults.OVERSAMPLE)[
                0
            ]
        bank_sources = sources.subset(idx)
        scorer = Scorer(BankPair(negative, positive, manifest))
        pred, pred_gt = [], []
        for i in range(0, te_f.shape[0], 16):
            feats = te_f[i : i + 16].astype(np.float32)
            ev = scorer.evidence(feats)
            b = feats.shape[0]
            i_pos = ev.i_pos  # each patch's nearest positive row
            pm = ev.patch_map("ratio_b")  # the served map of the default mode
            pred += bank_sources.lookup(rows_at(i_pos, peak_patches(pm, np), np))[1]
            gt = te_c[i : i + 16].reshape(b, -1) > 0  # oracle: the peak inside the true defect
            gt_pm = np.where(gt, pm.reshape(b, -1), -np.inf)
            pred_gt += bank_sources.lookup(rows_at(i_pos, np.argmax(gt_pm, axis=1), np))[1]
        acc = float(np.mean([p == t for p, t in zip(pred, truth)]))
        acc_gt = float(np.mean([p == t for p, t in zip(pred_gt, truth)]))
        per = {c: float(np.mean([p == t for p, t in zip(pred, truth) if t == c])) for c in sorted(set(truth))}
        confusion = Counter(f"{t}->{p}" for p, t in zip(pred, truth))
        record["banks"][name] = {
            "rows": int(positive.size),
            "accuracy": acc,
            "accuracy_peak_in_true_defect": acc_gt,
            "per_class": per,
            "confusion": dict(sorted(confusion.items())),
        }
        print(
            f"{name} ({positive.size} rows): nearest-defect class accuracy {acc:.3f} (peak inside the true defect: "
            f"{acc_gt:.3f}); majority class '{majority}' {record['majority_accuracy']:.3f}; per class {per}"
        )
    record["seconds"] = time.time() - t0
    record["date"] = time.strftime("%Y-%m-%d")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {a.out}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=("extract", "measure"))
    ap.add_argument("--size", default="256x256")
    ap.add_argument("--normals", type=int, default=250, help="seeded subset of the normal training images")
    ap.add_argument("--cache", default="runs/cache")
    ap.add_argument("--weights", default=WEIGHTS)
    ap.add_argument("--out", default="runs/nearest_defect.json")
    a = ap.parse_args()
    if a.step == "extract":
        extract_step(a)
    else:
        measure_step(a)


if __name__ == "__main__":
    main()
