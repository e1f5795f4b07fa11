"""One-pass evidence of repeated group splits of a dev set, for the decision study (docs/decision-study.md).

For one dev set (raw-feature caches from scripts/studies/study_cache.py; sets are folders of ../shared/data or of
EXDD_STUDY_DATA): train + test images pooled, regrouped by item (ksdd1_dev: the kosNN of `source_image`), spot
(bsdata_pitting: `spot`) or image (magnetic_tile, and a set without a mapping.csv: stratified by label), and split
again with each seed in the original proportions (test images that are byte copies of training images are dropped
first). Per split: banks built as `exdd offline build`
builds them (seeded 10 % hold-out, chunked k-center coreset 1 % / 10 %, defect-patch rule), then for every
held-out and test image the per-patch nearest distance and index to each bank, and the distances from each
bank's peak patch to m* and its 9 nearest bank neighbours (every reweighting variant needs them).
A build seed (--build-seeds) moves only the hold-out (the coreset starts moved with it before issue 25): two
build seeds on one split give the seed-to-seed stability. Written to OUT/<set>/<variant>/split{S}-build{B}.npz
+ .json (no pickle).

  nice -n 10 .venv/bin/python -m scripts.studies.study_splits --set ksdd1_dev:632x224 --splits 0,1,2,3,4 --build-seeds 0
  nice -n 10 .venv/bin/python -m scripts.studies.study_splits --set ksdd1_dev:632x224 --splits 0 --build-seeds 1
  # projection study: --proj pca|whiten|none --d 256|1536 (--max-normals N subsamples the normals)
  # every split also holds the image head's training evidence (cf_*): the defective training images, each fold of
  # exdd.offline.head.crossfit_folds scored against a positive bank built without it (not with --reuse-neg)
  # positive-bank coverage: --pos-ratio 1.0 (every defect patch) / --min-cover 0.1 (boundary patches too, a
  # dilation by up to one patch), --reuse-neg random-d256 (the negative evidence of that variant's same split)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np

from exdd import defaults
from exdd.datasets import Sample, duplicates_across, holdout_split, load_split
from exdd.offline.build import defect_patches
from exdd.offline.coreset import bank_size, chunked_kcenter
from exdd.offline.feature_cache import RawCache
from exdd.offline.features import make_projection
from exdd.offline.head import crossfit_folds
from exdd_scoring.knn import bank_neighbors, nearest, sq_norms
from scripts.common import STUDY_DATA, peak_dists

K_STUDY = 10  # m* and its 9 nearest bank neighbours
NEG_RATIO, POS_RATIO, MIN_BANK, HOLDOUT, MIN_COVER = (
    defaults.NEG_RATIO,
    defaults.POS_RATIO,
    defaults.MIN_BANK,
    defaults.HOLDOUT,
    defaults.MIN_COVER,
)  # as `exdd offline build`


def groups_of(root: str, samples: Sequence[Sample]) -> List[str]:
    """The group of each sample (item / spot / the image itself), read from the set's mapping.csv; a set without
    one (a new set, rule 4) has no groups known: every image is its own (splits stratified by label)."""
    rel = {os.path.relpath(s.path, root): i for i, s in enumerate(samples)}
    if not os.path.isfile(os.path.join(root, "mapping.csv")):
        return list(rel)
    rows = list(csv.DictReader(open(os.path.join(root, "mapping.csv"))))
    out = [""] * len(samples)
    for r in rows:
        f = r.get("file") or r.get("image") or r.get("new_image")
        if f not in rel:
            continue
        if "spot" in r:
            g = r["spot"]
        elif "source_image" in r and re.search(r"kos\d+", r["source_image"]) and "defect_type" not in r:
            g = re.search(r"kos\d+", r["source_image"]).group(0)
        else:
            g = f  # magnetic tile: no physical groups known
        out[rel[f]] = g
    missing = [s.path for s, g in zip(samples, out) if not g]
    if missing:
        raise ValueError(f"{root}: no mapping.csv row for {missing[:3]}")
    return out


def pooled_samples(root: str) -> Tuple[List[Sample], List[str], int, int]:
    """All train + test samples (test copies of training images dropped), their groups, original test share."""
    train, test = load_split(root, "train"), load_split(root, "test")
    copies = {p for p, _ in duplicates_across(test, train)}
    test = [s for s in test if s.path not in copies]
    allp = train + test
    return allp, groups_of(root, allp), len(copies), len(test)


def group_split(
    samples: Sequence[Sample], groups: Sequence[str], seed: int, orig_test: Sequence[Sample]
) -> Tuple[List[int], List[int]]:
    """(train, test) indices: whole groups to test in the original proportion of groups (or, when every image
    is its own group, the original per-label test fractions); both sides hold both labels."""
    y = np.array([s.label for s in samples])
    g = np.array(groups)
    uniq = sorted(set(groups))
    rng = np.random.default_rng(1000 + seed)
    test_paths = {s.path for s in orig_test}
    in_test = np.array([s.path in test_paths for s in samples])
    if len(uniq) == len(samples):  # image-level, stratified by label
        test = []
        for lab in (0, 1):
            idx = np.flatnonzero(y == lab)
            n = int(round(in_test[idx].mean() * idx.size))
            test += rng.permutation(idx)[:n].tolist()
        test_set = set(test)
        return [i for i in range(len(samples)) if i not in test_set], sorted(test)
    n_test_groups = len({gg for gg, t in zip(g, in_test) if t})
    for _ in range(1000):
        pick = set(rng.permutation(uniq)[:n_test_groups].tolist())
        te = np.array([gg in pick for gg in g])
        if y[te].min() == 0 and y[te].max() == 1 and y[~te].max() == 1 and y[~te].min() == 0:
            return np.flatnonzero(~te).tolist(), np.flatnonzero(te).tolist()
    raise RuntimeError("no group split with both labels on both sides")


class Features:
    """Every pooled image's projected features (n, P, d) float16, its patch mask coverage and its full mask."""

    def __init__(self, caches: Dict[str, RawCache], samples: Sequence[Sample]):
        self.caches, self.samples = caches, list(samples)
        self.where = [(s.split, caches[s.split].row_of(s.path)) for s in samples]

    def project(self, proj: np.ndarray, center: np.ndarray) -> np.ndarray:
        """(n, P, d) float16 of (raw - center) @ proj for every image, read chunk by chunk."""
        c0 = next(iter(self.caches.values()))
        h, w = c0.raw.shape[1:3]
        out = np.empty((len(self.samples), h * w, proj.shape[1]), np.float16)
        for i, (sp, r) in enumerate(self.where):
            x = np.asarray(self.caches[sp].raw[r], np.float32).reshape(h * w, -1)
            out[i] = (x - center) @ proj
        return out

    def covers(self, i: int) -> np.ndarray:
        sp, r = self.where[i]
        return self.caches[sp].covers[r]

    def raw_rows(self, idx: Sequence[int], per_image: int, seed: int) -> np.ndarray:
        """(len(idx) * per_image, 1536) float32 raw patches sampled from the given images (for PCA)."""
        rng = np.random.default_rng(seed)
        c0 = next(iter(self.caches.values()))
        P = c0.raw.shape[1] * c0.raw.shape[2]
        rows = []
        for i in idx:
            sp, r = self.where[i]
            x = np.asarray(self.caches[sp].raw[r], np.float32).reshape(P, -1)
            rows.append(x[rng.choice(P, min(per_image, P), replace=False)])
        return np.concatenate(rows)


def fitted_projection(kind: str, d: int, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(proj (1536, d), center (1536,)) of a projection fitted on normal patches x: PCA or PCA whitening."""
    mu = x.mean(axis=0)
    cov = np.cov((x - mu).T)
    val, vec = np.linalg.eigh(cov)
    order = np.argsort(val)[::-1][:d]
    p = vec[:, order]
    if kind == "whiten":
        p = p / np.sqrt(val[order] + 1e-3 * val[order][0])[None, :]
    return p.astype(np.float32), mu.astype(np.float32)


def make_bank(vectors: np.ndarray, ratio: float, seed: int) -> Tuple[np.ndarray, np.ndarray, Dict]:
    """Coreset bank as `build` makes it (chunked k-center; every row when it keeps them all) with 9 within-bank
    neighbours per element. seed: unused since issue 25 (the coreset has no seed; kept for the callers)."""
    keep = bank_size(vectors.shape[0], ratio, MIN_BANK)
    picked = (
        np.arange(vectors.shape[0]) if keep >= vectors.shape[0] else np.sort(chunked_kcenter(vectors, keep).indices)
    )
    bank = np.ascontiguousarray(vectors[picked], np.float32)
    nbr = bank_neighbors(bank, K_STUDY, np).astype(np.int64)
    nn1 = np.sqrt(((bank - bank[nbr[:, 0]]) ** 2).sum(1))
    return (
        bank,
        nbr,
        {
            "size": int(bank.shape[0]),
            "patches": int(vectors.shape[0]),
            "nn1_median": float(np.median(nn1)),
            "nn1_mean": float(nn1.mean()),
        },
    )


def bank_evidence(feats: np.ndarray, rows: Sequence[int], bank, tag: str, bs: int = 8) -> Dict[str, np.ndarray]:
    """Per-patch nearest distance / index to one bank (bank, neighbours) and the peak neighbourhood, for the given
    images, keyed a_TAG, i_TAG, nb_TAG."""
    out = {k: [] for k in ("a", "i", "nb")}
    sq = sq_norms(bank[0], np)
    rows = list(rows)
    for i in range(0, len(rows), bs):
        f = feats[rows[i : i + bs]].astype(np.float32)
        b, P, d = f.shape
        a, idx = nearest(f.reshape(-1, d), bank[0], np, sq)
        a, idx = a.reshape(b, P), idx.reshape(b, P)
        out["a"].append(a.astype(np.float32))
        out["i"].append(idx.astype(np.int32))
        out["nb"].append(peak_dists(f, idx, bank[0], bank[1], np.argmax(a, axis=1)))
    return {f"{k}_{tag}": np.concatenate(v) for k, v in out.items()}


def evidence(feats: np.ndarray, rows: Sequence[int], neg, pos) -> Dict[str, np.ndarray]:
    """bank_evidence of both banks."""
    return {**bank_evidence(feats, rows, neg, "neg"), **bank_evidence(feats, rows, pos, "pos")}


def crossfit_evidence(
    feats: np.ndarray, defects: Sequence[int], sel: np.ndarray, neg, pos_ratio: float, bseed: int
) -> Tuple[Dict[str, np.ndarray], List[Dict]]:
    """The defective training images' evidence as the image head is trained on it (exdd.offline.head): each fold of
    head.crossfit_folds scored against a positive bank built without its patches (make_bank, seed bseed + 1).
    Keyed a_neg ... nb_pos, ids, labels (all 1), fold; and each fold bank's statistics."""
    fold = crossfit_folds(len(defects), bseed)
    out: Dict[str, List[np.ndarray]] = {}
    stats = []
    d = feats.shape[-1]
    for f in range(int(fold.max()) + 1 if len(defects) > 1 else 0):
        rest, rows = fold != f, [defects[i] for i in np.flatnonzero(fold == f)]
        bank = make_bank(
            feats[[defects[i] for i in np.flatnonzero(rest)]][sel[rest]].reshape(-1, d), pos_ratio, bseed + 1
        )
        stats.append(bank[2])
        ev = evidence(feats, rows, neg, bank[:2])
        ev.update(
            ids=np.array(rows, np.int32), labels=np.ones(len(rows), np.int8), fold=np.full(len(rows), f, np.int16)
        )
        for k, v in ev.items():
            out.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in out.items()}, stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", required=True, help="NAME:HxW (caches in --cache/NAME-HxW/{train,test})")
    ap.add_argument("--splits", default="0,1,2,3,4")
    ap.add_argument("--build-seeds", default="0")
    ap.add_argument("--proj", default="random", choices=("random", "pca", "whiten", "none"))
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--neg-ratio", type=float, default=NEG_RATIO)
    ap.add_argument("--pos-ratio", type=float, default=POS_RATIO)
    ap.add_argument("--min-cover", type=float, default=MIN_COVER, help="mask cover that makes a patch a defect patch")
    ap.add_argument("--reuse-neg", default=None, help="variant whose negative evidence of the same split is reused")
    ap.add_argument("--max-normals", type=int, default=None, help="seeded subset of the training normals")
    ap.add_argument(
        "--fit-on",
        default="kept",
        choices=("kept", "train"),
        help="a fitted projection's normals: those the banks keep (as the build fits) or every training normal of "
        "the split, the held-out ones too (then the same for every build seed)",
    )
    ap.add_argument("--cache", default="runs/cache")
    ap.add_argument("--out", default="runs/decision")
    ap.add_argument("--variant", default=None, help="output sub-folder (default: PROJ-dD)")
    a = ap.parse_args()
    name, size = a.set.split(":")
    hw = tuple(int(v) for v in size.split("x"))
    root = os.path.join(STUDY_DATA, name)
    caches = {sp: RawCache(os.path.join(a.cache, f"{name}-{hw[0]}x{hw[1]}", sp)) for sp in ("train", "test")}
    samples, groups, n_copies, _ = pooled_samples(root)
    samples = [s for s in samples if caches[s.split].row_of(s.path) is not None]
    groups = groups_of(root, samples)
    orig_test = [s for s in samples if s.split == "test"]
    F = Features(caches, samples)
    variant = a.variant or f"{a.proj}-d{a.d if a.proj != 'none' else 1536}" + (
        f"-pos{a.pos_ratio:g}" if a.pos_ratio != POS_RATIO else ""
    ) + (f"-neg{a.neg_ratio:g}" if a.neg_ratio != NEG_RATIO else "") + (
        f"-cover{a.min_cover:g}" if a.min_cover != MIN_COVER else ""
    ) + ("-fitall" if a.fit_on == "train" else "")
    out_dir = os.path.join(a.out, name, variant)
    os.makedirs(out_dir, exist_ok=True)
    grid = list(caches["train"].raw.shape[1:3])
    feats_fixed = None
    if a.proj in ("random", "none"):
        t0 = time.time()
        proj = make_projection(a.d, 0) if a.proj == "random" else np.eye(1536, dtype=np.float32)
        feats_fixed = F.project(proj, np.zeros(1536, np.float32))
        print(
            f"{name}: projected {len(samples)} images to d={proj.shape[1]} in {time.time() - t0:.0f}s",
            file=sys.stderr,
            flush=True,
        )
    for split in (int(v) for v in a.splits.split(",")):
        tr, te = group_split(samples, groups, split, orig_test)
        for bseed in (int(v) for v in a.build_seeds.split(",")):
            stem = os.path.join(out_dir, f"split{split}-build{bseed}")
            if os.path.isfile(stem + ".json"):
                continue
            t0 = time.time()
            train = [samples[i] for i in tr]
            kept, held = holdout_split(train, HOLDOUT, bseed)
            pos_of = {s.path: i for i, s in enumerate(samples)}
            normals = [pos_of[s.path] for s in kept if s.label == 0]
            if a.max_normals and len(normals) > a.max_normals:
                normals = sorted(np.random.default_rng(split).permutation(normals)[: a.max_normals].tolist())
            defects = [pos_of[s.path] for s in kept if s.label == 1]
            held_i = [pos_of[s.path] for s in held]
            feats = feats_fixed
            if feats is None:
                fit = normals if a.fit_on == "kept" else [pos_of[s.path] for s in train if s.label == 0]
                p, mu = fitted_projection(a.proj, a.d, F.raw_rows(fit, 200, split))
                feats = F.project(p, mu)
            d = feats.shape[-1]
            reused = None
            if a.reuse_neg:  # the same split's negative bank evidence (same seeds, normals and images)
                ref = os.path.join(a.out, name, a.reuse_neg, f"split{split}-build{bseed}")
                ref_meta = json.load(open(ref + ".json"))
                if ref_meta["normals"] != len(normals) or ref_meta["paths"] != [s.path for s in samples]:
                    raise SystemExit(f"{ref}: not the same split (normals or images differ)")
                reused = np.load(ref + ".npz")
                neg = (None, None, ref_meta["neg"])
            else:
                neg = make_bank(feats[normals].reshape(-1, d), a.neg_ratio, bseed)
            cov = np.stack([F.covers(i) for i in defects])
            sel = defect_patches(cov, a.min_cover).reshape(len(defects), -1)
            pos = make_bank(feats[defects][sel], a.pos_ratio, bseed + 1)
            t_build = time.time() - t0
            arrays = {}
            timing = {}
            for key, rows in (("held", held_i), ("test", te)):
                t1 = time.time()
                if reused is not None:
                    if not np.array_equal(reused[f"{key}_ids"], np.asarray(rows, np.int32)):
                        raise SystemExit(f"{a.reuse_neg} split {split}: other {key} images")
                    ev = {k: reused[f"{key}_{k}"] for k in ("a_neg", "i_neg", "nb_neg")}
                    ev.update(bank_evidence(feats, rows, pos[:2], "pos"))
                else:
                    ev = evidence(feats, rows, neg[:2], pos[:2])
                timing[key] = round(1000 * (time.time() - t1) / max(len(rows), 1), 1)
                for k, v in ev.items():
                    arrays[f"{key}_{k}"] = v
                arrays[f"{key}_labels"] = np.array([samples[i].label for i in rows], np.int8)
                arrays[f"{key}_ids"] = np.array(rows, np.int32)
            if reused is None:  # the image head's training evidence: the defective training images cross-fitted
                t1 = time.time()
                cf, cf_pos = crossfit_evidence(feats, defects, sel, neg[:2], a.pos_ratio, bseed)
                arrays.update({f"cf_{k}": v for k, v in cf.items()})
                timing["crossfit_s"] = round(time.time() - t1, 1)
            np.savez(stem + ".npz", **arrays)
            meta = {
                "set": name,
                "input_size": list(hw),
                "grid": grid,
                "d": int(d),
                "proj": a.proj,
                "split": split,
                "build_seed": bseed,
                "neg": neg[2],
                "pos": pos[2],
                "normals": len(normals),
                "defect_images": len(defects),
                "held": len(held_i),
                "test": len(te),
                "test_defective": int(sum(samples[i].label for i in te)),
                "build_s": round(t_build, 1),
                "knn_ms_per_image": timing,
                "neg_ratio": a.neg_ratio,
                "pos_ratio": a.pos_ratio,
                "min_cover": a.min_cover,
                "reused_neg": a.reuse_neg,
                "cf_pos": cf_pos if reused is None else None,
                "copies_dropped": n_copies,
                "paths": [s.path for s in samples],
                "splits_of": [s.split for s in samples],
            }
            json.dump(meta, open(stem + ".json", "w"))
            print(
                f"{name} {variant} split {split} build {bseed}: test {len(te)} ({meta['test_defective']} def), "
                f"banks {neg[2]['size']}/{pos[2]['size']}, build {t_build:.0f}s, kNN {timing} ms/img, "
                f"total {time.time() - t0:.0f}s",
                file=sys.stderr,
                flush=True,
            )


if __name__ == "__main__":
    main()
