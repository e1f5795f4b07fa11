"""One-pass evidence of a dataset's test and held-out images, for the image-score study.

For one dataset and projection dimension d: banks built exactly as ``exdd offline build`` builds them
(same holdout, coreset, seed), from a raw-feature cache (offline/feature_cache.py); then for every
held-out and test image the per-patch nearest distance and index to each bank, and the distances
from each bank's peak patch to the 10 nearest bank elements of its nearest element m* (m* first),
which every reweighting variant needs. Written to ``OUT/evidence-d{d}.npz`` (plain arrays, no pickle).

  .venv/bin/python -m scripts.studies.study_evidence --dataset ../shared/data/ksdd1_dev --d 256
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

from exdd.datasets import holdout_split, load_split
from exdd.offline.build import BuildConfig, build
from exdd.offline.features import fingerprint, make_projection
from exdd_scoring import load_banks
from exdd_scoring.knn import nearest, sq_norms, topk_nearest
from scripts.common import peak_dists, raw_caches

WEIGHTS = "../shared/weights/wrn50-random0-bncal.safetensors"
K_STUDY = 10  # m* and its 9 nearest bank neighbours


def evidence(feats_iter, neg: np.ndarray, pos: np.ndarray, neg_nbr: np.ndarray, pos_nbr: np.ndarray):
    """Concatenated evidence arrays over batches of (b, P, d) float32 features."""
    out = {k: [] for k in ("a_neg", "i_neg", "a_pos", "i_pos", "nb_neg", "nb_pos", "nb_pos_at_negpeak")}
    neg_sq, pos_sq = sq_norms(neg, np), sq_norms(pos, np)
    for f in feats_iter:
        b, P, d = f.shape
        flat = f.reshape(-1, d)
        an, inn = nearest(flat, neg, np, neg_sq)
        ap, ip = nearest(flat, pos, np, pos_sq)
        an, inn, ap, ip = an.reshape(b, P), inn.reshape(b, P), ap.reshape(b, P), ip.reshape(b, P)
        out["a_neg"].append(an)
        out["i_neg"].append(inn.astype(np.int32))
        out["a_pos"].append(ap)
        out["i_pos"].append(ip.astype(np.int32))
        out["nb_neg"].append(peak_dists(f, inn, neg, neg_nbr, np.argmax(an, axis=1)))
        out["nb_pos"].append(peak_dists(f, ip, pos, pos_nbr, np.argmax(ap, axis=1)))
        # positive-bank neighbourhood read at the NEGATIVE bank's peak patch
        out["nb_pos_at_negpeak"].append(peak_dists(f, ip, pos, pos_nbr, np.argmax(an, axis=1)))
    return {k: np.concatenate(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--weights", default=WEIGHTS)
    ap.add_argument("--input-size", default="632x224")
    ap.add_argument("--cache", default="runs/cache")
    ap.add_argument("--out", default="runs/study")
    a = ap.parse_args()
    hw = tuple(int(v) for v in a.input_size.split("x"))
    name = os.path.basename(os.path.normpath(a.dataset))
    out_dir = os.path.join(a.out, f"{name}-{hw[0]}x{hw[1]}")
    os.makedirs(out_dir, exist_ok=True)
    caches = raw_caches(a.dataset, a.weights, hw, a.cache)
    proj = make_projection(a.d, 0)
    info = fingerprint(caches["train"].weights_id, proj, 0, hw)
    bank_dir = os.path.join(out_dir, f"banks-d{a.d}")
    cfg = BuildConfig()
    t0 = time.time()
    if not os.path.isfile(os.path.join(bank_dir, "manifest.json")):
        build(a.dataset, bank_dir, None, info, cfg, featurize=caches["train"].featurizer(proj))
    t_build = time.time() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pair = load_banks(bank_dir, info)
    neg, pos = pair.negative.vectors, pair.positive.vectors
    _, nn = topk_nearest(neg, neg, K_STUDY, np)
    _, pn = topk_nearest(pos, pos, K_STUDY, np)
    neg_nbr, pos_nbr = nn[:, 1:].astype(np.int64), pn[:, 1:].astype(np.int64)

    train = load_split(a.dataset, "train")
    _, held = holdout_split(train, cfg.holdout, cfg.seed)
    sets = {"held": (caches["train"], held), "test": (caches["test"], load_split(a.dataset, "test"))}
    arrays, meta = (
        {},
        {
            "dataset": a.dataset,
            "d": a.d,
            "input_size": list(hw),
            "grid": list(info["grid"]),
            "negative_size": int(neg.shape[0]),
            "positive_size": int(pos.shape[0]),
            "build_s": round(t_build, 1),
            "sets": {},
        },
    )
    for key, (cache, samples) in sets.items():
        kept, rows = cache.rows_of(samples)
        t1 = time.time()

        def feats(bs=8):
            for i in range(0, len(rows), bs):
                f = cache.project(rows[i : i + bs], proj, np.float32)
                yield f.reshape(f.shape[0], -1, a.d)

        ev = evidence(feats(), neg, pos, neg_nbr, pos_nbr)
        for k, v in ev.items():
            arrays[f"{key}_{k}"] = v
        arrays[f"{key}_labels"] = np.array([s.label for s in kept], dtype=np.int8)
        arrays[f"{key}_rows"] = np.array(rows, dtype=np.int32)
        meta["sets"][key] = {
            "n": len(kept),
            "defective": int(sum(s.label for s in kept)),
            "score_s": round(time.time() - t1, 1),
            "ms_per_image": round(1000 * (time.time() - t1) / max(len(kept), 1), 1),
        }
        print(f"{name} d={a.d} {key}: {meta['sets'][key]}", file=sys.stderr, flush=True)
    np.savez(os.path.join(out_dir, f"evidence-d{a.d}.npz"), **arrays)
    json.dump(meta, open(os.path.join(out_dir, f"evidence-d{a.d}.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
