"""What the build seed moves (issue 25): builds of one dev set that differ only in the hold-out draw, only in the
coreset starts, or in both, before and after the build was made deterministic in the images; the Spearman
correlation of the test images' scores between them, per mode.

Every build runs the functions `exdd offline build` runs (hold-out split, coreset, make_bank / bank_of, the
defect-patch rule, finish: fusion and thresholds on the held-out images, banks saved and loaded back) on features
projected once from the raw-feature caches (scripts/studies/study_cache.py; d = 256, projection seed 0), with the
hold-out of the normals, the hold-out of the defectives and the coreset starts chosen independently:
- hold-out rule "listing" (before issue 25: a seeded permutation of each label in listing order,
  exdd.datasets.legacy_holdout_split; the images stacked in listing order) or "content" (holdout_split: the
  smallest sha256 of "seed:content", images stacked in content order);
- coreset "seeded" (before issue 25, reproduced here: a seeded random start row per chunk, seed s for the negative
  bank and s + 1 for the positive one) or "fixed" (chunked_kcenter: every chunk starts at its row farthest from the
  chunk mean, no seed).
The old `offline build --seed s` is (listing s, listing s, seeded s); the new one is (content s, content s, fixed).
--check-build also runs `build()` itself (cached featurizer) for content seed 0 and asserts byte-identical banks.

  nice -n 5 .venv/bin/python -m scripts.studies.study_stability --set ksdd1_dev:632x224 --cache runs/cache \
      --json runs/stability/ksdd1_dev.json --check-build
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np

from exdd import defaults
from exdd.datasets import Sample, canonical_order, duplicates_across, holdout_split, legacy_holdout_split, load_split
from exdd.metrics import auroc, spearman
from exdd.offline.build import (
    BuildConfig,
    Plan,
    bank_of,
    build,
    calibration_scorer,
    defect_patches,
    finish,
    make_bank,
    score_samples,
)
from exdd.offline.coreset import Coreset, bank_size, greedy_picks, merge_chunks
from exdd.offline.extract import Extracted
from exdd.offline.feature_cache import RawCache
from exdd.offline.features import fingerprint, make_projection
from exdd_scoring import Scorer, load_banks
from scripts.common import STUDY_DATA, cache_folder
from scripts.harness import BenchResult, params_of

MODES = ("dual_bounded", "dual", "patchcore")
RULES = {"listing": legacy_holdout_split, "content": holdout_split}


def seeded_kcenter(
    x: np.ndarray, k: int, seed: int, chunk_rows: int = defaults.CHUNK_ROWS, oversample: float = defaults.OVERSAMPLE
) -> Coreset:
    """chunked_kcenter as it was before issue 25: a seeded random start row per chunk (exact greedy below a chunk)."""
    n = x.shape[0]
    if k >= n:
        return Coreset(np.arange(n, dtype=np.int64), 0.0, False, "all")
    rng = np.random.default_rng(seed)
    if n <= chunk_rows:
        sel, vals = greedy_picks(np.ascontiguousarray(x, np.float32), k, int(rng.integers(n)))
        return Coreset(sel, float(vals[-1]), False, "exact")
    bounds = np.linspace(0, n, math.ceil(n / chunk_rows) + 1).round().astype(np.int64)
    picks, radii = [], []
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        start = int(rng.integers(b - a))
        sel, vals = greedy_picks(
            np.ascontiguousarray(x[a:b], np.float32), max(1, math.ceil(oversample * k * (b - a) / n)), start
        )
        picks.append(sel + a)
        radii.append(vals)
    return merge_chunks(picks, radii, k, f"chunked(rows={chunk_rows},oversample={oversample})")


class Projected:
    """Every image of a split projected once: (n, h, w, d) float16, its mask coverage, and a build() featurizer."""

    def __init__(self, cache: RawCache, samples: Sequence[Sample], proj: np.ndarray):
        self.samples, rows = cache.rows_of(samples)
        self.row = {s.path: i for i, s in enumerate(self.samples)}
        self.feats = cache.project(rows, proj)
        self.covers = cache.covers[rows]

    def take(self, samples: Sequence[Sample]) -> Tuple[np.ndarray, np.ndarray]:
        r = [self.row[s.path] for s in samples]
        return self.feats[r], self.covers[r]

    def featurize(self, samples, with_mask, progress):
        f, c = self.take(samples)
        return Extracted(f, c if with_mask else None, list(samples), [])


def one_build(
    root: str,
    out: str,
    tr: Projected,
    train: List[Sample],
    features: Dict,
    rule: str,
    h_normal: int,
    h_defect: int,
    coreset: str,
    c_seed: int,
) -> Dict:
    """Banks from the training images with the given hold-out seeds (normals, defectives) and coreset rule;
    returns the bank sizes and the held-out paths. The banks are written to out."""
    cfg = BuildConfig(seed=h_normal)
    split = RULES[rule]
    kn, hn = split(train, cfg.holdout, h_normal)
    kd, hd = split(train, cfg.holdout, h_defect)
    normals = [s for s in kn if s.label == 0]
    defects = [s for s in kd if s.label == 1]
    held = [s for s in hn if s.label == 0] + [s for s in hd if s.label == 1]
    if rule == "content":  # build() keeps the held-out images in content order
        pos = {s.path: i for i, s in enumerate(canonical_order(train))}
        held.sort(key=lambda s: pos[s.path])
    d = tr.feats.shape[-1]
    fn, _ = tr.take(normals)
    fd, cov = tr.take(defects)
    neg_x, pos_x = fn.reshape(-1, d), fd[defect_patches(cov, cfg.min_cover)]
    if coreset == "fixed":
        neg = make_bank(neg_x, cfg.neg_ratio, cfg.min_size, cfg.k, cfg.chunk_rows, cfg.oversample)
        pos = make_bank(pos_x, cfg.pos_ratio, cfg.min_size, cfg.k, cfg.chunk_rows, cfg.oversample)
    else:

        def seeded(x, ratio, seed):
            cs = seeded_kcenter(x, bank_size(x.shape[0], ratio, cfg.min_size), seed, cfg.chunk_rows, cfg.oversample)
            return bank_of(x[np.sort(cs.indices)], x.shape[0], cs, ratio, cfg.min_size, cfg.k)

        neg, pos = seeded(neg_x, cfg.neg_ratio, c_seed), seeded(pos_x, cfg.pos_ratio, c_seed + 1)
    fh, _ = tr.take(held)
    labels = np.array([s.label for s in held])

    def held_scores(pair):
        return score_samples(calibration_scorer(pair), fh), labels

    finish(
        root,
        out,
        features,
        cfg,
        (),
        Plan(normals, defects, [], held),
        neg,
        pos,
        {"real": len(defects), "synthetic": 0},
        [],
        held_scores,
    )
    return {"neg": neg[0].size, "pos": pos[0].size, "held": sorted(os.path.relpath(s.path, root) for s in held)}


def scores_of_test(bank_dir: str, te: Projected, batch: int = 16) -> Dict[str, np.ndarray]:
    scorer = Scorer(load_banks(bank_dir))
    out: Dict[str, List[np.ndarray]] = {m: [] for m in MODES}
    for i in range(0, te.feats.shape[0], batch):
        r = scorer.score(te.feats[i : i + batch].astype(np.float32), map_modes=(), modes=MODES)
        for m in MODES:
            out[m].append(r.scores[m])
    return {m: np.concatenate(v) for m, v in out.items()}


def bank_bytes(folder: str) -> Dict[str, bytes]:
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder)) if f.endswith(".npy")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", required=True, help="NAME:HxW (caches in --cache/NAME-HxW/{train,test})")
    ap.add_argument("--cache", default="runs/cache")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of each factor (pairs among them)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--check-build", action="store_true", help="assert the study's content-0 build == build()'s")
    a = ap.parse_args()
    name, size = a.set.split(":")
    hw = tuple(int(v) for v in size.split("x"))
    root = os.path.join(STUDY_DATA, name)
    train, test = load_split(root, "train"), load_split(root, "test")
    copies = {p for p, _ in duplicates_across(test, train)}
    test = [s for s in test if s.path not in copies]
    caches = {sp: RawCache(cache_folder(a.cache, name, hw, sp)) for sp in ("train", "test")}
    proj = make_projection(defaults.D, 0)
    features = fingerprint(caches["train"].weights_id, proj, 0, hw)
    t0 = time.time()
    tr, te = Projected(caches["train"], train, proj), Projected(caches["test"], test, proj)
    train = [s for s in train if s.path in tr.row]
    labels = np.array([s.label for s in te.samples])
    log = lambda s: print(f"[{time.time() - t0:6.0f}s] {s}", file=sys.stderr, flush=True)  # noqa: E731
    log(f"{name}: {len(train)} train, {len(te.samples)} test images ({int(labels.sum())} defective) projected")
    S = list(range(a.seeds))
    # build key: (rule, normal hold-out seed, defect hold-out seed, coreset, coreset seed)
    before = {
        "hold-out (normals and defectives)": [("listing", s, s, "seeded", 0) for s in S],
        "coreset starts": [("listing", 0, 0, "seeded", s) for s in S],
        "both (the old --seed)": [("listing", s, s, "seeded", s) for s in S],
    }
    after = {
        "hold-out (normals and defectives) = the new --seed": [("content", s, s, "fixed", 0) for s in S],
        "hold-out of the normals only": [("content", s, 0, "fixed", 0) for s in S],
        "hold-out of the defectives only": [("content", 0, s, "fixed", 0) for s in S],
    }
    keys = list(dict.fromkeys(k for g in (before, after) for ks in g.values() for k in ks))
    scores, info = {}, {}
    with tempfile.TemporaryDirectory(prefix="exdd-stability-") as tmp:
        for key in keys:
            out = os.path.join(tmp, "-".join(map(str, key)))
            info[key] = one_build(root, out, tr, train, features, *key)
            scores[key] = scores_of_test(out, te)
            log(
                f"build {key}: banks {info[key]['neg']} + {info[key]['pos']}, "
                + ", ".join(f"{m} AUROC {auroc(scores[key][m], labels):.3f}" for m in MODES)
            )
            if a.check_build and key == ("content", 0, 0, "fixed", 0):
                ref = os.path.join(tmp, "build")
                build(root, ref, None, features, BuildConfig(seed=0), featurize=tr.featurize)
                assert bank_bytes(ref) == bank_bytes(out), "the study's build differs from build()'s"
                log("check: build() gives byte-identical banks")
    res = {
        "set": name,
        "input_size": list(hw),
        "n_test": len(te.samples),
        "defective": int(labels.sum()),
        "seeds": S,
        "builds": {
            "|".join(map(str, k)): {**info[k], "auroc": {m: auroc(scores[k][m], labels) for m in MODES}} for k in keys
        },
        "factors": {},
    }
    for stage, groups in (("before", before), ("after", after)):
        for factor, ks in groups.items():
            pairs = list(itertools.combinations(ks, 2))
            rho = {m: [spearman(scores[p][m], scores[q][m]) for p, q in pairs] for m in MODES}
            res["factors"][f"{stage}: {factor}"] = {
                m: {"mean": float(np.mean(v)), "min": float(np.min(v)), "pairs": [round(x, 4) for x in v]}
                for m, v in rho.items()
            }
    print(f"| {name} {hw[0]}x{hw[1]}: what differs between the builds | " + " | ".join(MODES) + " |")
    print("|---|" + "---|" * len(MODES))
    for f, v in res["factors"].items():
        print(f"| {f} | " + " | ".join(f"{v[m]['mean']:.3f} (min {v[m]['min']:.3f})" for m in MODES) + " |")
    if a.json:
        BenchResult("study_stability", params_of(a), res).save(a.json)


if __name__ == "__main__":
    main()
