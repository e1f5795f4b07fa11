"""The image-score study: every image-score definition derived from one pass of evidence, with intervals.

Reads the evidence files of scripts/studies/study_evidence.py (per-patch distances and indices to both banks,
peak-neighbourhood distances) and, for each dataset and d, scores the test images with every candidate
definition, reports image AUROC with a bootstrap 90% interval and the paired bootstrap difference to
`patchcore` (the same resampled images for both), and pixel AUROC / AUPRO of each map kind.

  .venv/bin/python -m scripts.studies.study_image_score runs/study/ksdd1_dev-632x224 runs/study/magnetic_tile-632x224 \
      --ds 256,512,1536 --json runs/study/study.json > runs/study/study.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Callable, Dict

import numpy as np

from exdd.datasets import duplicates_across, load_split
from exdd.metrics import aupro, auroc
from exdd.offline.feature_cache import RawCache
from exdd_scoring import upsample_smooth_matrices
from exdd_scoring.fusion import fit_fusion, fusion_score
from exdd_scoring.scores import MAP_KINDS, dual_map, mode
from exdd_scoring.scores import fusion_inputs as served_fusion_inputs
from scripts.common import STUDY_EPS, reweighted, served_evidence, smooth_maps

EPS = STUDY_EPS
N_BOOT = 2000


class Evidence:
    """One set's evidence with its smoothed maps computed on demand."""

    def __init__(self, z, key: str, grid, s_h, s_w, d: int):
        self.a_neg = z[f"{key}_a_neg"].astype(np.float64)
        self.a_pos = z[f"{key}_a_pos"].astype(np.float64)
        self.nb_neg = z[f"{key}_nb_neg"].astype(np.float64)
        self.nb_pos = z[f"{key}_nb_pos"].astype(np.float64)
        self.labels = z[f"{key}_labels"].astype(int)
        self.rows = z[f"{key}_rows"]
        self.grid, self.s_h, self.s_w, self.d = tuple(grid), s_h, s_w, d
        self._maps: Dict[str, np.ndarray] = {}
        self._ev = None

    @property
    def ev(self):
        """The served scorer's Evidence of these images (scripts.common.served_evidence): s-, s+, maps and modes."""
        if self._ev is None:
            self._ev = served_evidence(self, None, {})
        return self._ev

    def patch(self, kind: str) -> np.ndarray:
        """(n, P) patch map of a served kind (neg, ratio, dual) or the served dual map at another gamma (dual_gG)."""
        if kind.startswith("dual_g"):  # a-^(1+g) / a+^g
            g = float(kind[len("dual_g") :])
            return dual_map(dataclasses.replace(self.ev, params={"gamma": g}, _maps={}), EPS)
        return MAP_KINDS[kind](self.ev)

    def smooth(self, kind: str) -> np.ndarray:
        if kind in MAP_KINDS:
            return self.ev.image_map(kind)
        if kind not in self._maps:
            self._maps[kind] = smooth_maps(self.patch(kind).reshape(-1, *self.grid), self.s_h, self.s_w)
        return self._maps[kind]

    def keep(self, mask: np.ndarray) -> None:
        """Keep only the images where mask is True (e.g. leave out copies of training images)."""
        for k in ("a_neg", "a_pos", "nb_neg", "nb_pos", "labels", "rows"):
            setattr(self, k, getattr(self, k)[mask])
        self._maps.clear()
        self._ev = None


def candidates(e: Evidence) -> Dict[str, Callable[[], np.ndarray]]:
    """Every image-score definition studied, by name."""
    td = float(e.d) ** 0.5
    s_neg_star = e.a_neg.max(axis=1)
    b = np.arange(e.a_neg.shape[0])
    pk = np.argmax(e.a_neg, axis=1)
    pc = lambda: np.asarray(mode("patchcore").score(e.ev))  # noqa: E731 (the served `patchcore`)
    c: Dict[str, Callable[[], np.ndarray]] = {
        "patchcore": pc,
        "pc_raw_max": lambda: s_neg_star,
        "exdd": lambda: np.asarray(mode("exdd").score(e.ev)),
        "exdd_peak": lambda: pc() / (e.a_pos[b, pk] + EPS),
        "ratio_patch_max": lambda: e.patch("ratio").max(axis=1),
        "ratio_map_max": lambda: e.smooth("ratio").reshape(len(b), -1).max(axis=1),
        "ratio_map_top1pct": lambda: top_mean(e.smooth("ratio"), 0.01),
        "neg_map_max": lambda: e.smooth("neg").reshape(len(b), -1).max(axis=1),
        "dual_patch_max": lambda: e.patch("dual").max(axis=1),
        "dual_map_max": lambda: np.asarray(mode("dual").score(e.ev)),
        "pc_x_ratio_map_max": lambda: pc() * e.smooth("ratio").reshape(len(b), -1).max(axis=1),
        "pc_x_peak_ratio": lambda: pc() * s_neg_star / (e.a_pos[b, pk] + EPS),
        "pc_x_sqrt_ratio_map_max": lambda: pc() * np.sqrt(e.smooth("ratio").reshape(len(b), -1).max(axis=1)),
    }
    for g in ("0.5", "2"):
        c[f"dual_g{g}_map_max"] = lambda g=g: e.smooth(f"dual_g{g}").reshape(len(b), -1).max(axis=1)
    c["dual_map_top1pct"] = lambda: top_mean(e.smooth("dual"), 0.01)
    c["pc_k9_keep_t1_x_ratio_map_max"] = lambda: (
        reweighted(s_neg_star, e.nb_neg, 9, True, 1.0) * e.smooth("ratio").reshape(len(b), -1).max(axis=1)
    )
    for k in (3, 9):
        for keep in (False, True):
            for tname, t in (("t1", 1.0), ("tsqrtd", td)):
                name = f"pc_k{k}_{'keep' if keep else 'drop'}_{tname}"
                c[name] = lambda k=k, keep=keep, t=t: reweighted(s_neg_star, e.nb_neg, k, keep, t)
    return c


def fusion_inputs(e: Evidence) -> np.ndarray:
    """The fusion's (n, 3) log features of a set (the served fusion's inputs)."""
    return np.asarray(served_fusion_inputs(e.ev))


def top_mean(maps: np.ndarray, frac: float) -> np.ndarray:
    """Mean of the top frac of each map's pixels. Not the served topk_mean: k = round(frac x n), not ceil, as when
    the study's figures were made (the served top-k modes came later, issue 25)."""
    flat = maps.reshape(maps.shape[0], -1)
    n = max(1, int(round(frac * flat.shape[1])))
    return np.partition(flat, flat.shape[1] - n, axis=1)[:, -n:].mean(axis=1)


def fast_auroc(s: np.ndarray, y: np.ndarray) -> float:
    """Mann-Whitney AUROC with ties counted half."""
    from scipy.stats import rankdata

    r = rankdata(s)
    npos = int(y.sum())
    nneg = y.size - npos
    if npos == 0 or nneg == 0:
        return float("nan")
    return float((r[y == 1].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def boot_indices(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """(n, N) bootstrap resamples of image indices, stratified by label (both classes always present)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.nonzero(y == 1)[0], np.nonzero(y == 0)[0]
    return np.concatenate([rng.choice(pos, (n, pos.size)), rng.choice(neg, (n, neg.size))], axis=1)


def study_one(folder: str, d: int, cache_root: str, drop_leaked: bool = False) -> Dict:
    z = np.load(os.path.join(folder, f"evidence-d{d}.npz"))
    meta = json.load(open(os.path.join(folder, f"evidence-d{d}.json")))
    grid, hw = meta["grid"], meta["input_size"]
    s_h, s_w = upsample_smooth_matrices(tuple(grid), tuple(hw), 4.0)
    test = Evidence(z, "test", grid, s_h, s_w, d)
    ds_name = os.path.basename(folder.rstrip("/"))
    cache = RawCache(os.path.join(cache_root, ds_name, "test"))
    leaked = set()
    if drop_leaked:  # test images byte-identical to training images (ksdd1_dev: test kos26 = train kos01)
        pairs = duplicates_across(load_split(meta["dataset"], "test"), load_split(meta["dataset"], "train"))
        leaked = {os.path.abspath(p) for p, _ in pairs}
        test.keep(np.array([os.path.abspath(cache.paths[r]) not in leaked for r in test.rows]))
    y = test.labels
    cands = candidates(test)
    scores = {name: f() for name, f in cands.items()}
    held = Evidence(z, "held", grid, s_h, s_w, d)
    params = fit_fusion(fusion_inputs(held), held.labels)
    scores["fusion"] = fusion_score(fusion_inputs(test), params, np)
    idx = boot_indices(y, N_BOOT)
    base = scores["patchcore"]
    rows = {}
    for name, s in scores.items():
        boots = np.array([fast_auroc(s[i], y[i]) for i in idx])
        diffs = boots - np.array([fast_auroc(base[i], y[i]) for i in idx]) if name != "patchcore" else np.zeros(1)
        rows[name] = {
            "auroc": fast_auroc(s, y),
            "ci90": [float(np.quantile(boots, 0.05)), float(np.quantile(boots, 0.95))],
            "diff_vs_patchcore": float(np.mean(diffs)),
            "diff_ci90": [float(np.quantile(diffs, 0.05)), float(np.quantile(diffs, 0.95))],
            "p_better": float(np.mean(diffs > 0)),
        }
    pix = {}
    masks = np.asarray(cache.masks[test.rows.tolist()])
    if masks.any():
        for kind in ("neg", "ratio", "dual", "dual_g0.5"):
            m = test.smooth(kind)
            pix[kind] = {"pixel_auroc": auroc(m.ravel(), masks.ravel()), "pixel_aupro": aupro(m, masks)}
    return {
        "dataset": ds_name,
        "d": d,
        "fusion": params,
        "n_test": int(y.size),
        "defective": int(y.sum()),
        "left_out_copies_of_training_images": len(leaked),
        "bank_sizes": [meta["negative_size"], meta["positive_size"]],
        "image": rows,
        "pixel": pix,
        "ms_per_image": meta["sets"]["test"]["ms_per_image"],
        "build_s": meta["build_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--ds", default="256")
    ap.add_argument("--cache", default="runs/cache")
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--drop-leaked",
        action="store_true",
        help="leave out test images byte-identical to training images (as `offline evaluate` does)",
    )
    a = ap.parse_args()
    results = []
    for folder in a.folders:
        for d in (int(v) for v in a.ds.split(",")):
            if not os.path.isfile(os.path.join(folder, f"evidence-d{d}.npz")):
                print(f"skip {folder} d={d}: no evidence", file=sys.stderr)
                continue
            r = study_one(folder, d, a.cache, a.drop_leaked)
            results.append(r)
            print(
                f"\n### {r['dataset']}, d = {d} (test: {r['n_test']} images, {r['defective']} defective, "
                f"{r['left_out_copies_of_training_images']} copies of training images left out; "
                f"banks {r['bank_sizes'][0]} / {r['bank_sizes'][1]}; kNN {r['ms_per_image']} ms/image)\n"
            )
            print("| image score | AUROC | 90% CI | diff vs patchcore | 90% CI of diff | P(better) |")
            print("|---|---|---|---|---|---|")
            for name, v in sorted(r["image"].items(), key=lambda kv: -kv[1]["auroc"]):
                print(
                    f"| {name} | {v['auroc']:.3f} | {v['ci90'][0]:.3f}-{v['ci90'][1]:.3f} | "
                    f"{v['diff_vs_patchcore']:+.3f} | {v['diff_ci90'][0]:+.3f} to {v['diff_ci90'][1]:+.3f} | "
                    f"{v['p_better']:.2f} |"
                )
            if r["pixel"]:
                print("\n| map | pixel AUROC | pixel AUPRO |\n|---|---|---|")
                for kind, v in r["pixel"].items():
                    print(f"| {kind} | {v['pixel_auroc']:.4f} | {v['pixel_aupro']:.4f} |")
            sys.stdout.flush()
    if a.json:
        json.dump(results, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
