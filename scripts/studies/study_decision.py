"""The decision study: every image score and map on repeated group splits of every dev set, decided by a rule.

Reads the evidence of scripts/studies/study_splits.py (OUT/<set>/<variant>/split{S}-build{B}.npz). For every split:
each candidate image score (CANDIDATES) and each map kind (MAPS) from the one-pass evidence, with the
served formulas themselves (exdd_scoring.scores on the split's evidence: scripts.common.served_evidence).

Protocol (BENCHMARKS.md, "The image decision, decided with enough data"):
- paired bootstrap against `patchcore`: one Poisson(1) weight per image of a dev set per resample (an image
  that is a test image of several splits keeps one weight), weighted AUROC on every split, the per-set
  difference = mean over its splits, the pooled difference = mean over the sets (each set weighs equally);
- a candidate becomes the default image score only if its pooled 90 % interval is above 0 and no set's
  point difference is below -0.02; among those, the largest pooled difference;
- maps the same way against the ratio map (pixel AUROC, pixel-resampled by image; AUPRO point values);
- stability: Spearman correlation of the test scores of two builds of a split that differ only in the build
  seed (which images are held out), the mean over the splits that have both builds; beside it the share of test
  images both builds give the same IS_DEFECT, each at the threshold the build calibrates (held_thresholds), and
  at one operating point (rank_agreement).
The pooled image scores of issue 25 (POOLED: top-k means of the dual_b01 and of the served ratio_b map at each
fraction of TOPK_STUDY, the image head; EXPLORATORY, only when named in --images: dual_bounded and dual_topk with
the dual map's exponent at each GAMMA_STUDY, 'dual_b01_g2', 'dual_topk_g2@0.05') are computed by the served modes
themselves (exdd_scoring.scores on an Evidence rebuilt from the split's evidence) and the head fitted by
exdd.offline.head, as the build fits it.

  .venv/bin/python -m scripts.studies.study_decision runs/decision --variant random-d256 \
      --json runs/decision/decision.json
  # the peer on the same splits and images (scripts/studies/peer_splits.py first), with issue 25's goals:
  .venv/bin/python -m scripts.studies.study_decision runs/decision --variant random-d256 --peer anomalib \
      --sets ksdd1_dev,magnetic_tile --images patchcore,dual_b01,dual_topk@0.01 --maps ratio_b
  # rule 5's two-stage scores (TWO_STAGE) read a denser variant of the same splits, paired with rule 4's C:
  .venv/bin/python -m scripts.studies.study_decision runs/decision --variant random-d256 --dense random-d256-neg0.025 \
      --against random-d256-neg0.025 --against-image dual_topk_g2@0.05 --images two_stage_g2@0.06,two_stage_g2@1
  # two variants of the same splits, paired (e.g. positive-bank coverage):
  .venv/bin/python -m scripts.studies.study_decision runs/decision --variant random-d256-cover0.1 \
      --against random-d256 --images dual,patchcore --maps ratio_b,dual
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from exdd.defaults import TARGET_FPR
from exdd.metrics import aupro
from exdd.offline.calibrate import CROSSFIT_EXCLUDED, crossfit_threshold
from exdd.offline.feature_cache import RawCache
from exdd.offline.head import HEAD_L2, fit_head
from exdd_scoring import upsample_smooth_matrices
from exdd_scoring.fusion import fit_fusion, fusion_score
from exdd_scoring.scores import (
    DUAL_EPS_REL,
    MAP_KINDS,
    MODE_REGISTRY,
    RAISE_EPS_REL,
    TOPK_FRACTION,
    Evidence,
    eps_b,
    fusion_inputs,
    head_inputs,
    mode,
    topk_count,
)
from scripts.common import reweighted, served_evidence, smooth_maps
from scripts.harness import BenchResult, params_of

SETS = ("ksdd1_dev", "magnetic_tile", "bsdata_pitting")


class SplitEvidence:
    """One split's evidence (test or held images) and its smoothed maps, computed on demand: the served scorer's
    Evidence (self.ev, served_evidence) computes every served score and map; the study adds its variants."""

    def __init__(self, z, meta: Dict, key: str, s_h: np.ndarray, s_w: np.ndarray):
        self.key = key  # 'test', 'held' or 'cf': which images of the split
        self.a_neg = z[f"{key}_a_neg"].astype(np.float64)
        self.a_pos = z[f"{key}_a_pos"].astype(np.float64)
        self.nb_neg = z[f"{key}_nb_neg"].astype(np.float64)
        self.nb_pos = z[f"{key}_nb_pos"].astype(np.float64)
        self.labels = z[f"{key}_labels"].astype(int)
        self.ids = z[f"{key}_ids"].astype(int)
        self.grid, self.d = tuple(meta["grid"]), int(meta["d"])
        self.s_h, self.s_w = s_h, s_w
        self.ev = served_evidence(self, meta["pos"]["nn1_median"], {"topk": TOPK_FRACTION})
        self._maps: Dict[str, np.ndarray] = {}

    @property
    def s_neg(self) -> np.ndarray:
        return self.ev.s_neg

    @property
    def s_pos(self) -> np.ndarray:
        return self.ev.s_pos

    def patch(self, kind: str) -> np.ndarray:
        """(n, P) patch map: the served kinds (exdd_scoring.scores.MAP_KINDS) and the study's two that are not served
        (ratio_b01: the bounded ratio at dual_b01's eps; raise_g2: the raise map squared)."""
        if kind in MAP_KINDS:
            return MAP_KINDS[kind](self.ev)
        an, ap = self.a_neg, self.a_pos
        return {
            "ratio_b01": lambda: an / (ap + eps_b(self.ev, DUAL_EPS_REL)),
            "raise_g2": lambda: an * np.maximum(1.0, an / (ap + eps_b(self.ev, RAISE_EPS_REL))) ** 2,
        }[kind]()

    def smooth(self, kind: str) -> np.ndarray:
        if kind in MAP_KINDS:
            return self.ev.image_map(kind)
        if kind not in self._maps:
            self._maps[kind] = smooth_maps(self.patch(kind).reshape(-1, *self.grid), self.s_h, self.s_w)
        return self._maps[kind]

    def map_max(self, kind: str) -> np.ndarray:
        m = self.smooth(kind)
        return m.reshape(m.shape[0], -1).max(1)


MAPS = ("neg", "ratio", "ratio_b", "ratio_b01", "dual", "dual_b", "dual_b01", "raise")


def candidates(e: SplitEvidence) -> Dict[str, Callable[[], np.ndarray]]:
    """Every image score studied, by name: the served modes (mode(NAME).score) and the study's variants of them."""
    td = e.d**0.5
    s_star = e.a_neg.max(1)
    served = lambda name: lambda: np.asarray(mode(name).score(e.ev))  # noqa: E731
    return {
        "patchcore": served("patchcore"),
        "pc_anomalib_k9": lambda: reweighted(s_star, e.nb_neg, 9, True, 1.0),
        "pc_k9_drop_tsqrtd": lambda: reweighted(s_star, e.nb_neg, 9, False, td),
        "pc_raw_max": lambda: s_star,
        "neg_map_max": lambda: e.map_max("neg"),
        "exdd": served("exdd"),
        "exdd_b": lambda: e.s_neg / (e.s_pos + eps_b(e.ev)),
        "ratio_map_max": lambda: e.map_max("ratio"),
        "dual": served("dual"),
        "dual_b": lambda: e.map_max("dual_b"),
        "dual_b01": served("dual_bounded"),
        "raise_map_max": served("raise"),
        "raise_g2_map_max": lambda: e.map_max("raise_g2"),
        "pc_raise": lambda: e.s_neg * e.map_max("raise") / e.map_max("neg"),
    }


def fusion_x(e: SplitEvidence) -> np.ndarray:
    """The served fusion's inputs (exdd_scoring.scores.fusion_inputs)."""
    return np.asarray(fusion_inputs(e.ev))


TOPK_STUDY = (0.002, 0.01, 0.05)  # the top-k fractions of the map's pixels studied (issue 25)
HEADS = {"head": HEAD_L2, "head_l2x10": 10 * HEAD_L2}  # the head as built, and one 10x more regularised
GAMMA_STUDY = (2.0,)  # other exponents of the dual map a- (a-/(a+ + eps))^gamma (served: DEFAULT_GAMMA), exploratory
POOLED = tuple(f"{m}@{f:g}" for m in ("dual_topk", "ratio_topk") for f in TOPK_STUDY) + tuple(HEADS)
# name -> (gamma, served mode, top-k fraction); computed only when named in --images: a default run (and its
# decide()) never sees them
EXPLORATORY: Dict[str, Tuple[float, str, float]] = {
    **{f"dual_b01_g{g:g}": (g, "dual_bounded", TOPK_FRACTION) for g in GAMMA_STUDY},
    **{f"dual_topk_g{g:g}@{f:g}": (g, "dual_topk", f) for g in GAMMA_STUDY for f in TOPK_STUDY},
}


# Rule 5 (docs/decision-study.md): rule 4's candidate C scored in two stages. name -> (gamma, candidate fraction q,
# top-k fraction); computed only when named in --images and a denser variant is given (--dense)
TWO_STAGE: Dict[str, Tuple[float, float, float]] = {
    "two_stage_g2@0.06": (2.0, 0.06, 0.05),
    "two_stage_g2@1": (2.0, 1.0, 0.05),
}


def two_stage(
    a_neg: np.ndarray, a_pos: np.ndarray, a_neg_dense: np.ndarray, eps: float, gamma: float, q: float, f: float
) -> np.ndarray:
    """(n,) rule 5's C2: per image the ceil(q P) patches of largest a- (a-/(a+ + eps))^gamma on the served bank
    (a_neg (n, P)) are scored again with the denser bank's a- (a_neg_dense: the served bank plus rows, so never
    larger), and the score is the mean of the top ceil(f P) of those (f <= q; patch grid, unsmoothed)."""
    P = a_neg.shape[1]
    kq, kf = topk_count(P, q), topk_count(P, f)
    if kf > kq:
        raise ValueError(f"top-k fraction {f} above the candidate fraction {q}")

    def dual(an: np.ndarray, ap: np.ndarray) -> np.ndarray:
        return an * (an / (ap + eps)) ** gamma

    cand = np.argpartition(dual(a_neg, a_pos), P - kq, axis=1)[:, P - kq :]
    d = dual(np.take_along_axis(a_neg_dense, cand, 1), np.take_along_axis(a_pos, cand, 1))
    return np.partition(d, kq - kf, axis=1)[:, kq - kf :].mean(axis=1)


def dense_a_neg(z_dense, key: str, ids: np.ndarray, a_neg: np.ndarray) -> np.ndarray:
    """The denser variant's a- of the same split and images (rule 5), checked to hold the served bank: never above
    its a- (the denser greedy coreset keeps the served one as its prefix)."""
    if not np.array_equal(z_dense[f"{key}_ids"], ids):
        raise SystemExit("the denser variant holds other test images")
    dense = z_dense[f"{key}_a_neg"].astype(np.float64)
    if np.any(dense > a_neg):
        raise SystemExit("the denser variant's negative bank does not hold the served one (a- above the served a-)")
    return dense


def pooled_scores(
    z,
    meta: Dict,
    te: SplitEvidence,
    held: SplitEvidence,
    s_h: np.ndarray,
    s_w: np.ndarray,
    names: Sequence[str],
    z_dense=None,
) -> Tuple[Dict[str, np.ndarray], Optional[Dict]]:
    """The pooled image scores of issue 25 with the served modes' formulas (exdd_scoring.scores): top-k means at
    each fraction of TOPK_STUDY ('dual_topk@0.01'), and the image head fitted as `exdd offline build` fits it
    (exdd.offline.head.fit_head) on the held-out images and the cross-fitted defective training images (cf_*)."""
    out: Dict[str, np.ndarray] = {}
    base = {"topk": TOPK_FRACTION}
    ev = te.ev  # one evidence: its smoothed maps are computed once
    by_gamma: Dict[float, Evidence] = {}  # the served modes on an evidence whose dual map has another exponent
    for name in names:
        if name in TWO_STAGE:
            if z_dense is None:
                raise SystemExit(f"{name} needs a denser variant of the same splits (--dense)")
            g, q, f = TWO_STAGE[name]
            dense = dense_a_neg(z_dense, te.key, te.ids, te.a_neg)
            out[name] = two_stage(te.a_neg, te.a_pos, dense, eps_b(te.ev, DUAL_EPS_REL), g, q, f)
        elif name in EXPLORATORY:
            g, m, f = EXPLORATORY[name]
            if g not in by_gamma:
                by_gamma[g] = served_evidence(te, meta["pos"]["nn1_median"], dict(base, gamma=g))
            by_gamma[g].params["topk"] = f
            out[name] = np.asarray(mode(m).score(by_gamma[g]))
        elif "@" in name:
            m, f = name.split("@")
            ev.params["topk"] = float(f)
            out[name] = np.asarray(mode(m).score(ev))
    ev.params["topk"] = TOPK_FRACTION
    head = None
    if any(h in names for h in HEADS):
        xs, ys = [np.asarray(head_inputs(held.ev))], [held.labels]
        if meta.get("cf_pos"):
            cf = SplitEvidence(z, meta, "cf", s_h, s_w)
            fold = z["cf_fold"]
            for f, st in enumerate(meta["cf_pos"]):
                xs.append(np.asarray(head_inputs(served_evidence(cf, st["nn1_median"], base, fold == f))))
                ys.append(cf.labels[fold == f])
        n_cf = sum(len(y) for y in ys[1:])
        for name, l2 in HEADS.items():
            if name not in names:
                continue
            fitted = fit_head(np.concatenate(xs), np.concatenate(ys), meta["build_seed"], l2=l2, crossfit=n_cf)
            ev.params["head"] = fitted
            out[name] = np.asarray(mode("head").score(ev))
            head = fitted if name == "head" else head
    return out, head


def split_scores(
    z, meta: Dict, s_h: np.ndarray, s_w: np.ndarray, images: Optional[Sequence[str]], z_dense=None, key: str = "test"
) -> Tuple[SplitEvidence, Dict[str, np.ndarray], Dict, Optional[Dict]]:
    """One split's test evidence, the scores of every candidate asked for (all by default), the fusion's and the
    head's parameters. z_dense: the same split's evidence with a denser negative bank (rule 5's TWO_STAGE);
    key 'held': the held-out images' instead of the test images' (what the build calibrates its threshold on)."""
    te = SplitEvidence(z, meta, key, s_h, s_w)
    held = SplitEvidence(z, meta, "held", s_h, s_w)
    scores = {k: fn() for k, fn in candidates(te).items() if images is None or k in images}
    params = fit_fusion(fusion_x(held), held.labels)
    if images is None or "fusion" in images:
        scores["fusion"] = fusion_score(fusion_x(te), params, np)
    named = [n for n in POOLED if images is None or n in images]
    named += [n for n in (*EXPLORATORY, *TWO_STAGE) if images and n in images]
    pooled, head = pooled_scores(z, meta, te, held, s_h, s_w, named, z_dense)
    scores.update(pooled)
    return te, scores, params, head


SERVED_MODES = {"dual_b01": "dual_bounded"}  # a study name whose served mode has another name


def crossfit_scores(z, meta: Dict, s_h: np.ndarray, s_w: np.ndarray, names: Sequence[str]) -> Dict[str, np.ndarray]:
    """Each score of the cross-fitted defective training images (cf_*), each fold's images by the served formulas
    with their fold bank's spacing (as the head fit reads them); names: served modes (SERVED_MODES, 'MODE@f' for a
    top-k fraction); empty without cross-fitted images."""
    if not meta.get("cf_pos"):
        return {n: np.zeros(0) for n in names}
    cf, fold = SplitEvidence(z, meta, "cf", s_h, s_w), z["cf_fold"]
    out = {n: np.zeros(fold.size) for n in names}
    for f, st in enumerate(meta["cf_pos"]):
        rows = fold == f
        for n in names:
            m, frac = served_name(n), n.partition("@")[2]
            if m is None:
                raise ValueError(f"{n}: not a served mode, it has no cross-fitted score")
            ev = served_evidence(cf, st["nn1_median"], {"topk": float(frac) if frac else TOPK_FRACTION}, rows)
            out[n][rows] = np.asarray(mode(m).score(ev))
    return out


def served_name(name: str) -> Optional[str]:
    """The served mode a study score is (SERVED_MODES; 'MODE@f': MODE at top-k fraction f), None for a study-only
    score."""
    m = name.partition("@")[0]
    m = SERVED_MODES.get(m, m)
    return m if m in MODE_REGISTRY else None


def held_thresholds(
    z, meta: Dict, s_h: np.ndarray, s_w: np.ndarray, names: Sequence[str], z_dense=None
) -> Dict[str, float]:
    """Each score's threshold as `exdd offline build` calibrates it (rule 7, offline.calibrate.crossfit_threshold):
    F1 on the split's held-out images, scored as the test images are (the fusion and the head fitted on them, as
    the build fits them), plus the cross-fitted defective training images for a served mode but fusion and head; a
    study-only score (served_name None) on the held-out images alone."""
    held, scores, _, _ = split_scores(z, meta, s_h, s_w, names, z_dense, key="held")
    served = [n for n in scores if served_name(n) not in (None, *CROSSFIT_EXCLUDED)]
    cf = crossfit_scores(z, meta, s_h, s_w, served)
    return {
        k: float(crossfit_threshold(v, held.labels, cf.get(k), "f1", TARGET_FPR)["value"]) for k, v in scores.items()
    }


def agreement(s0: np.ndarray, s1: np.ndarray, t0: float, t1: float) -> float:
    """Share of images two builds give the same IS_DEFECT (score >= that build's own threshold)."""
    return float(np.mean((np.asarray(s0) >= t0) == (np.asarray(s1) >= t1)))


def rank_agreement(s0: np.ndarray, s1: np.ndarray, t0: float) -> float:
    """The same at one operating point: build 1 flags as many images as build 0 does at t0 (its top ones, ties
    broken by order), so only the ranking can make them differ."""
    s0, s1 = np.asarray(s0), np.asarray(s1)
    flag0 = s0 >= t0
    flag1 = np.zeros(s1.size, bool)
    flag1[np.argsort(-s1, kind="stable")[: int(flag0.sum())]] = True
    return float(np.mean(flag0 == flag1))


def weighted_auroc(scores: np.ndarray, labels: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(R,) AUROC of one scoring under R weight vectors w (R, n) over its n images (ties count half)."""
    lv, inv = np.unique(scores, return_inverse=True)
    hp = np.zeros((scores.size, lv.size))
    hp[np.arange(scores.size), inv] = 1.0
    pos = labels.astype(bool)
    P, Q = w[:, pos] @ hp[pos], w[:, ~pos] @ hp[~pos]
    return hist_auroc(P, Q)


def hist_auroc(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """AUROC per row from positive / negative weights (R, L) over ascending levels."""
    below = np.cumsum(Q, axis=1) - Q
    tot = P.sum(1) * Q.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, (P * (below + 0.5 * Q)).sum(1) / tot, np.nan)


def pixel_hists(maps: np.ndarray, masks: np.ndarray, bins: int = 2048) -> Tuple[np.ndarray, np.ndarray]:
    """Per image (n, L) counts of defect and normal pixels over the split's quantile levels of the map."""
    sub = maps.ravel()[:: max(1, maps.size // 2_000_000)].astype(np.float64)
    levels = np.unique(np.quantile(sub, np.linspace(0, 1, bins + 1)[1:-1]))
    L = levels.size + 1
    hp, hn = np.zeros((maps.shape[0], L)), np.zeros((maps.shape[0], L))
    for i in range(maps.shape[0]):
        idx = np.searchsorted(levels, maps[i].ravel().astype(np.float64))
        m = masks[i].ravel()
        hp[i] = np.bincount(idx[m], minlength=L)
        hn[i] = np.bincount(idx[~m], minlength=L)
    return hp, hn


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).correlation)


def load_split(path: str) -> Tuple[Dict, "np.lib.npyio.NpzFile"]:
    return json.load(open(path[:-4] + ".json")), np.load(path)


def peer_split(
    folder: str, split_file: str, peer: str, ids: np.ndarray, normals: int, with_maps: bool = True
) -> Optional[Tuple[np.ndarray, Optional[np.ndarray]]]:
    """A peer's (scores, maps) on the same test images as a study split (scripts/studies/peer_splits.py:
    <set>/peer-<peer>/<split file>, next to the variant's folder), None when that build was not run; a run on other
    test images or another number of normals is refused. with_maps=False: the maps are not read (None)."""
    path = os.path.join(os.path.dirname(folder), f"peer-{peer}", os.path.basename(split_file))
    if not os.path.isfile(path):
        return None
    z, meta = np.load(path), json.load(open(path[:-4] + ".json"))
    if not np.array_equal(z["ids"], ids):
        raise SystemExit(f"{path}: other test images than {split_file}")
    if meta["normals"] != normals:
        raise SystemExit(f"{path}: fitted on {meta['normals']} normals, {split_file}'s banks on {normals}")
    return z["scores"].astype(np.float64), z["maps"] if with_maps else None


def dense_split(folder: str, split_file: str, dense: Optional[str]):
    """The same split file's evidence in the denser variant (<set>/<dense>/, next to the variant's folder), or None."""
    if dense is None:
        return None
    path = os.path.join(os.path.dirname(folder), dense, os.path.basename(split_file))
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such split in the denser variant")
    return np.load(path)


def study_set(
    folder: str,
    n_boot: int,
    seed: int,
    cache_root: str,
    pro_stride: int,
    images: Optional[Sequence[str]] = None,
    maps: Optional[Sequence[str]] = None,
    peers: Sequence[str] = (),
    dense: Optional[str] = None,
) -> Dict:
    """Per split: scores of every candidate, bootstrap AUROCs (n_boot), pixel hist AUROCs and AUPRO per map
    (images / maps: only these candidates and map kinds; peers: each peer's score and map under its name)."""
    files = sorted(glob.glob(os.path.join(folder, "split*-build0.npz")))
    if not files:
        raise FileNotFoundError(f"{folder}: no split*-build0.npz")
    meta0 = json.load(open(files[0][:-4] + ".json"))
    n_all = len(meta0["paths"])
    w_all = np.random.default_rng(seed).poisson(1.0, (n_boot, n_all)).astype(np.float64)
    hw = tuple(meta0["input_size"])
    caches = {sp: RawCache(os.path.join(cache_root, f"{meta0['set']}-{hw[0]}x{hw[1]}", sp)) for sp in ("train", "test")}
    where = [(sp, caches[sp].row_of(p)) for p, sp in zip(meta0["paths"], meta0["splits_of"])]
    s_h, s_w = upsample_smooth_matrices(tuple(meta0["grid"]), hw, 4.0)
    out = {"set": meta0["set"], "splits": [], "variant": os.path.basename(folder)}
    for f in files:
        meta, z = load_split(f)
        te, scores, params, head = split_scores(z, meta, s_h, s_w, images, dense_split(folder, f, dense))
        peer_maps = {}
        for p in peers:
            got = peer_split(folder, f, p, te.ids, meta["normals"])
            if got is None:
                raise SystemExit(f"{folder}: no peer-{p} run of {os.path.basename(f)}")
            scores[p], peer_maps[p] = got
        w = w_all[:, te.ids]
        ones = np.ones((1, te.ids.size))
        img = {
            k: {"point": float(weighted_auroc(s, te.labels, ones)[0]), "boot": weighted_auroc(s, te.labels, w)}
            for k, s in scores.items()
        }
        masks = np.stack([np.asarray(caches[sp].masks[r]) for sp, r in (where[i] for i in te.ids)])
        pix = {}
        for kind in list(MAPS if maps is None else maps) + list(peers):
            m = peer_maps[kind] if kind in peer_maps else te.smooth(kind)
            hp, hn = pixel_hists(m, masks)
            pix[kind] = {
                "point": float(hist_auroc(hp.sum(0)[None], hn.sum(0)[None])[0]),
                "boot": hist_auroc(w @ hp, w @ hn),
                "aupro": float(aupro(m[:, ::pro_stride, ::pro_stride], masks[:, ::pro_stride, ::pro_stride])),
            }
            te._maps.pop(kind, None)
        stab: Dict[str, float] = {}
        agree: Dict[str, float] = {}
        agree_rank: Dict[str, float] = {}
        f1 = f.replace("-build0.npz", "-build1.npz")
        if os.path.isfile(f1):
            meta1, z1 = load_split(f1)
            te1, s1, _, _ = split_scores(z1, meta1, s_h, s_w, list(scores), dense_split(folder, f1, dense))
            for p in peers:
                got1 = peer_split(folder, f1, p, te1.ids, meta1["normals"], with_maps=False)
                if got1 is not None:
                    s1[p] = got1[0]
            stab = {k: spearman(scores[k], s1[k]) for k in scores if k in s1}
            stab_auroc = {k: float(weighted_auroc(s1[k], te1.labels, ones)[0]) for k in s1}
            own = [k for k in scores if k in s1 and k not in peers]  # a peer has no held-out scores here
            t0 = held_thresholds(z, meta, s_h, s_w, own, dense_split(folder, f, dense))
            t1 = held_thresholds(z1, meta1, s_h, s_w, own, dense_split(folder, f1, dense))
            agree = {k: agreement(scores[k], s1[k], t0[k], t1[k]) for k in own}
            agree_rank = {k: rank_agreement(scores[k], s1[k], t0[k]) for k in own}
        else:
            stab_auroc = {}
        peak = {k: float(np.max(s)) for k, s in scores.items()}
        out["splits"].append(
            {
                "file": os.path.basename(f),
                "n_test": int(te.ids.size),
                "defective": int(te.labels.sum()),
                "banks": [meta["neg"]["size"], meta["pos"]["size"]],
                "fusion": params,
                "head": head,
                "eps_b": eps_b(te.ev),
                "image": img,
                "pixel": pix,
                "stability": stab,
                "agreement": agree,
                "agreement_rank": agree_rank,
                "build1_auroc": stab_auroc,
                "max_score": peak,
                "knn_ms_per_image": meta["knn_ms_per_image"]["test"],
            }
        )
        print(
            f"{out['set']} {os.path.basename(f)}: " + ", ".join(f"{k} {v['point']:.3f}" for k, v in img.items()),
            file=sys.stderr,
            flush=True,
        )
    return out


def ci(v: np.ndarray) -> List[float]:
    v = v[np.isfinite(v)]
    return [float(np.quantile(v, 0.05)), float(np.quantile(v, 0.95))]


def summarise(sets: List[Dict], level_key: str, base: str) -> Dict[str, Dict]:
    """Per candidate: per-set mean AUROC, paired difference vs base (point, 90 % CI), and the pooled ones."""
    names = list(sets[0]["splits"][0][level_key])
    res = {}
    for n in names:
        per, pooled_b, pooled_p = {}, [], []
        for s in sets:
            pts = np.array([sp[level_key][n]["point"] for sp in s["splits"]])
            bpts = np.array([sp[level_key][base]["point"] for sp in s["splits"]])
            db = np.mean([sp[level_key][n]["boot"] - sp[level_key][base]["boot"] for sp in s["splits"]], axis=0)
            ab = np.mean([sp[level_key][n]["boot"] for sp in s["splits"]], axis=0)
            row = {
                "auroc": float(pts.mean()),
                "auroc_ci90": ci(ab),
                "diff": float((pts - bpts).mean()),
                "diff_ci90": ci(db),
                "per_split": pts.round(4).tolist(),
            }
            if level_key == "pixel":
                row["aupro"] = float(np.mean([sp["pixel"][n]["aupro"] for sp in s["splits"]]))
                row["aupro_diff"] = row["aupro"] - float(np.mean([sp["pixel"][base]["aupro"] for sp in s["splits"]]))
            else:
                st = [sp["stability"][n] for sp in s["splits"] if n in sp["stability"]]
                row["stability"] = float(np.mean(st)) if st else None
                for key in ("agreement", "agreement_rank"):
                    ag = [sp[key][n] for sp in s["splits"] if n in sp.get(key, {})]
                    row[key] = float(np.mean(ag)) if ag else None
            per[s["set"]] = row
            pooled_b.append(db)
            pooled_p.append(row["diff"])
        pb = np.mean(pooled_b, axis=0)
        r = {
            "per_set": per,
            "pooled_diff": float(np.mean(pooled_p)),
            "pooled_ci90": ci(pb),
            "pooled_auroc": float(np.mean([v["auroc"] for v in per.values()])),
            "worst_set_diff": float(min(v["diff"] for v in per.values())),
        }
        if level_key == "pixel":
            r["pooled_aupro"] = float(np.mean([v["aupro"] for v in per.values()]))
        else:
            st = [v["stability"] for v in per.values() if v["stability"] is not None]
            r["stability_min"] = float(min(st)) if st else None
        r["passes"] = bool(
            n != base
            and r["pooled_ci90"][0] > 0
            and r["worst_set_diff"] >= -0.02
            and (
                level_key != "pixel"
                or r["pooled_aupro"]
                >= np.mean([np.mean([sp["pixel"][base]["aupro"] for sp in s["splits"]]) for s in sets])
            )
        )
        res[n] = r
    return res


def decide(image: Dict[str, Dict], pixel: Dict[str, Dict]) -> Dict[str, str]:
    """The rule of BENCHMARKS.md: the best passing candidate, else the most robust score / the best map."""
    passing = [n for n, r in image.items() if r["passes"]]
    if passing:
        img, why = max(passing, key=lambda n: image[n]["pooled_diff"]), "passes the rule"
    else:
        img = max(image, key=lambda n: (round(image[n]["worst_set_diff"], 3), image[n]["stability_min"] or 0))
        why = "nothing passes: the most robust score (largest worst-set difference vs patchcore)"
    mpass = [n for n, r in pixel.items() if r["passes"]]
    if mpass:
        mp, mwhy = max(mpass, key=lambda n: pixel[n]["pooled_auroc"] + pixel[n]["pooled_aupro"]), "passes the rule"
    else:
        mp = max(pixel, key=lambda n: pixel[n]["pooled_auroc"] + pixel[n]["pooled_aupro"])
        mwhy = "nothing passes: the best map (pooled pixel AUROC + AUPRO)"
    return {"image": img, "image_why": why, "map": mp, "map_why": mwhy}


def replaces_served(vs_patchcore: Dict[str, Dict], vs_served: Dict[str, Dict], served: str) -> Dict[str, str]:
    """Issue 25's rule for changing the served image score (written before the pooled figures): a candidate
    replaces it only if it passes the rule against `patchcore`, its pooled difference against the served score
    is >= -0.01 with the interval's lower end > -0.03, and its stability is >= 0.9 on every set where the served
    score's is below 0.9. Per candidate: 'yes' or the first condition it misses."""
    out = {}
    low = [s for s, v in vs_served[served]["per_set"].items() if (v["stability"] or 0) < 0.9]
    for n, r in vs_served.items():
        if n in (served, "patchcore"):
            continue
        unstable = [s for s in low if (r["per_set"][s]["stability"] or 0) < 0.9]
        if not vs_patchcore[n]["passes"]:
            out[n] = "no: does not pass against patchcore"
        elif r["pooled_diff"] < -0.01 or r["pooled_ci90"][0] <= -0.03:
            out[n] = f"no: {r['pooled_diff']:+.3f} [{r['pooled_ci90'][0]:+.3f}, ...] against {served}"
        elif unstable:
            out[n] = "no: stability under 0.9 on " + ", ".join(
                f"{s} ({r['per_set'][s]['stability']:.3f})" for s in unstable
            )
        else:
            out[n] = "yes"
    return out


RULE4 = ("dual_topk_g2@0.05", "ratio_b")  # rule 4's candidate C: its image score and map (of the 2.5 % variant)


def rule4_verdict(image: Dict[str, Dict], pixel: Dict[str, Dict], n_sets: int) -> Dict[str, str]:
    """Rule 4 as written (docs/decision-study.md, 19:55 UTC, before any held-back figure), from versus() of the
    2.5 % variant against the 1 % one: image = C's score paired with the served `dual_b01`, pixel = C's map paired
    with the served map. C replaces the default only if pooled >= -0.01 with the 90 % interval's lower end > -0.03,
    no set below -0.03, stability >= 0.9 on every set (measured: both build seeds), and the map not below the
    default's by more than 0.01 on any set. Per clause 'yes' or why not; 'verdict': 'replace' or 'keep'."""
    score, kind = RULE4
    r, m = image[score], pixel[kind]
    per = r["per_set"]
    out = {
        "sets": "yes" if len(per) == n_sets >= 1 else f"no: {len(per)} of {n_sets} sets",
        "pooled": "yes"
        if r["pooled_diff"] >= -0.01 and r["pooled_ci90"][0] > -0.03
        else f"no: {r['pooled_diff']:+.3f} [{r['pooled_ci90'][0]:+.3f}, {r['pooled_ci90'][1]:+.3f}]",
    }
    low = [f"{s} ({v['diff']:+.3f})" for s, v in per.items() if v["diff"] < -0.03]
    out["every set"] = "no: " + ", ".join(low) if low else "yes"
    unstable = [
        f"{s} ({'not measured' if v['stability'] is None else format(v['stability'], '.3f')})"
        for s, v in per.items()
        if v["stability"] is None or v["stability"] < 0.9
    ]
    out["stability"] = "no: under 0.9 on " + ", ".join(unstable) if unstable else "yes"
    worse = [f"{s} ({v['diff']:+.3f})" for s, v in m["per_set"].items() if v["diff"] < -0.01]
    out["map"] = "no: " + ", ".join(worse) if worse else "yes"
    out["verdict"] = "replace" if all(v == "yes" for v in out.values()) else "keep"
    return out


PEER_GOALS = {"image": ("dual_b01", 0.02), "pixel": ("ratio_b", 0.05)}  # issue 25: served score / map, margin


def peer_goals(image: Dict[str, Dict], pixel: Dict[str, Dict]) -> Dict[str, str]:
    """Issue 25's goals against the peer, from summarise(..., peer): the served image score >= the peer + 0.02 and
    the served map >= the peer + 0.05 pixel AUROC on every set (point differences; the pooled interval is shown)."""
    out = {}
    for level, res in (("image", image), ("pixel", pixel)):
        name, margin = PEER_GOALS[level]
        if name not in res:
            continue
        r = res[name]
        short = [s for s, v in r["per_set"].items() if v["diff"] < margin]
        per = ", ".join(f"{s} {v['diff']:+.3f}" for s, v in r["per_set"].items())
        out[level] = (
            f"{level}: `{name}` - peer {r['pooled_diff']:+.3f} [{r['pooled_ci90'][0]:+.3f}, "
            f"{r['pooled_ci90'][1]:+.3f}] pooled ({per}); goal +{margin:g} on every set: "
            + ("reached" if not short else "not reached on " + ", ".join(short))
        )
    return out


def table(res: Dict[str, Dict], sets: List[str], pixel: bool) -> str:
    """Markdown: pooled and per-set difference vs the base with 90 % intervals."""
    head = (
        "| "
        + ("map" if pixel else "image score")
        + " | pooled diff [90% CI] | "
        + " | ".join(f"{s} AUROC, diff [90% CI]" for s in sets)
        + (" | pooled AUPRO |" if pixel else " | stability (min) | passes |")
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for n, r in sorted(res.items(), key=lambda kv: -kv[1]["pooled_diff"]):
        cells = [f"{r['pooled_diff']:+.3f} [{r['pooled_ci90'][0]:+.3f}, {r['pooled_ci90'][1]:+.3f}]"]
        for s in sets:
            v = r["per_set"][s]
            cells.append(
                f"{v['auroc']:.3f}, {v['diff']:+.3f} [{v['diff_ci90'][0]:+.3f}, {v['diff_ci90'][1]:+.3f}]"
                + (f", AUPRO {v['aupro']:.3f}" if pixel else "")
            )
        tail = (
            f"{r['pooled_aupro']:.3f}"
            if pixel
            else (f"{r['stability_min']:.2f}" if r["stability_min"] is not None else "-")
            + f" | {'yes' if r['passes'] else 'no'}"
        )
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {tail} |")
    return "\n".join(lines)


def versus(var: List[Dict], base: List[Dict], level_key: str, base_name: Optional[str] = None) -> Dict[str, Dict]:
    """Paired difference variant - base of every candidate (level_key image | pixel) on the same splits, images
    and bootstrap weights (study_set's weights are seeded by image): per set the mean over its splits, pooled the
    mean over the sets. base_name: every candidate is paired with this score of the base (default: itself)."""
    res: Dict[str, Dict] = {}
    by_set = {b["set"]: b for b in base}
    for n in var[0]["splits"][0][level_key]:
        per, boots, pts = {}, [], []
        bn = base_name or n
        for v in var:
            b = by_set[v["set"]]
            if [sp["file"] for sp in v["splits"]] != [sp["file"] for sp in b["splits"]]:
                raise SystemExit(f"{v['set']}: the variants hold other splits")
            pairs = list(zip(v["splits"], b["splits"]))
            db = np.mean([x[level_key][n]["boot"] - y[level_key][bn]["boot"] for x, y in pairs], axis=0)
            dp = float(np.mean([x[level_key][n]["point"] - y[level_key][bn]["point"] for x, y in pairs]))
            per[v["set"]] = {
                "auroc": float(np.mean([x[level_key][n]["point"] for x in v["splits"]])),
                "base": float(np.mean([y[level_key][bn]["point"] for y in b["splits"]])),
                "diff": dp,
                "diff_ci90": ci(db),
            }
            if level_key == "pixel":
                per[v["set"]]["aupro"] = float(np.mean([x["pixel"][n]["aupro"] for x in v["splits"]]))
                per[v["set"]]["base_aupro"] = float(np.mean([y["pixel"][n]["aupro"] for y in b["splits"]]))
            else:
                st = [x["stability"][n] for x in v["splits"] if n in x["stability"]]
                per[v["set"]]["stability"] = float(np.mean(st)) if st else None
                for key in ("agreement", "agreement_rank"):
                    ag = [x[key][n] for x in v["splits"] if n in x.get(key, {})]
                    per[v["set"]][key] = float(np.mean(ag)) if ag else None
            boots.append(db)
            pts.append(dp)
        res[n] = {"per_set": per, "pooled_diff": float(np.mean(pts)), "pooled_ci90": ci(np.mean(boots, axis=0))}
    return res


def versus_table(res: Dict[str, Dict], sets: List[str], label: str) -> str:
    """Markdown: the variant's AUROC, the base's, and the paired difference with its 90 % interval, per set and
    pooled."""
    head = (
        f"| {label} | pooled diff [90% CI] | " + " | ".join(f"{s}: variant / base, diff [90% CI]" for s in sets) + " |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for n, r in res.items():
        cells = [f"{r['pooled_diff']:+.3f} [{r['pooled_ci90'][0]:+.3f}, {r['pooled_ci90'][1]:+.3f}]"]
        for s in sets:
            v = r["per_set"][s]
            extra = f", AUPRO {v['aupro']:.3f} / {v['base_aupro']:.3f}" if "aupro" in v else ""
            cells.append(
                f"{v['auroc']:.3f} / {v['base']:.3f}, {v['diff']:+.3f} [{v['diff_ci90'][0]:+.3f}, "
                f"{v['diff_ci90'][1]:+.3f}]{extra}"
            )
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def steadiness_table(res: Dict[str, Dict], sets: List[str]) -> str:
    """Markdown: per image score and set, the seed-to-seed Spearman, the share of test images both builds give the
    same IS_DEFECT at their own held-out thresholds, and the same share at one operating point (build 1 flagging
    as many as build 0: the ranking alone); means over the splits with both builds."""
    head = "| image score | " + " | ".join(f"{s}: Spearman / same IS_DEFECT (own thresholds; one point)" for s in sets)
    lines = [head + " |", "|" + "---|" * (head.count("|"))]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for n, r in res.items():
        cells = [
            f"{fmt(r['per_set'][s].get('stability'), '.3f')} / {fmt(r['per_set'][s].get('agreement'), '.1%')}; "
            f"{fmt(r['per_set'][s].get('agreement_rank'), '.1%')}"
            for s in sets
        ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_json(a: argparse.Namespace, payload: Dict) -> None:
    """The study's figures as a BenchResult JSON at --json (nothing without it)."""
    if a.json:
        BenchResult("study_decision", params_of(a), payload).save(a.json)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", help="the --out folder of study_splits.py")
    ap.add_argument("--variant", default="random-d256")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--cache", default="runs/cache")
    ap.add_argument("--pro-stride", type=int, default=2, help="AUPRO on every n-th pixel row and column")
    ap.add_argument("--json", default=None)
    ap.add_argument("--against", default=None, help="compare --variant with this variant (paired), not with patchcore")
    ap.add_argument("--images", default=None, help="only these image scores (comma-separated; patchcore always)")
    ap.add_argument("--maps", default=None, help="only these maps (comma-separated; ratio always)")
    ap.add_argument("--image-base", default="patchcore", help="the image score the others are paired with")
    ap.add_argument(
        "--against-image",
        default=None,
        help="with --against: pair every image score of --variant with this one of the --against variant",
    )
    ap.add_argument(
        "--peer",
        default=None,
        help="pair every image score and map with this peer's on the same images (scripts/studies/peer_splits.py, "
        "e.g. anomalib) and check issue 25's goals against it",
    )
    ap.add_argument(
        "--rule4",
        action="store_true",
        help="rule 4 on the sets given (held-back data): --variant the 2.5 %% variant, --against the 1 %% one; "
        "pairs C (" + RULE4[0] + ", map " + RULE4[1] + ") with the served dual_b01 and prints the verdict",
    )
    ap.add_argument(
        "--dense",
        default=None,
        help="the same splits built with a denser negative bank (e.g. random-d256-neg0.025): rule 5's two-stage "
        "scores (" + ", ".join(TWO_STAGE) + ") read its a-",
    )
    a = ap.parse_args()
    if a.rule4:
        if not a.against:
            raise SystemExit("--rule4 needs --against (the 1 % variant of the same splits)")
        a.images, a.maps, a.against_image = RULE4[0], RULE4[1], "dual_b01"
    names = [s for s in a.sets.split(",") if os.path.isdir(os.path.join(a.root, s, a.variant))]
    if a.peer:
        imgs = a.images.split(",") if a.images else None
        mps = a.maps.split(",") if a.maps else None
        sets = [
            study_set(os.path.join(a.root, s, a.variant), a.boot, 0, a.cache, a.pro_stride, imgs, mps, (a.peer,))
            for s in names
        ]
        image, pixel = summarise(sets, "image", a.peer), summarise(sets, "pixel", a.peer)
        print(
            f"## {a.variant} paired with `{a.peer}`: "
            + ", ".join(
                f"{s['set']} ({len(s['splits'])} splits, {sum(sp['n_test'] for sp in s['splits'])} test images)"
                for s in sets
            )
        )
        print(f"\n### Image level: paired difference vs `{a.peer}`\n")
        print(table(image, names, False))
        print(f"\n### Pixel level: paired difference vs `{a.peer}`'s map\n")
        print(table(pixel, names, True))
        goals = peer_goals(image, pixel)
        print("\n" + "\n".join(f"- {v}" for v in goals.values()))
        save_json(a, {"variant": a.variant, "peer": a.peer, "image": image, "pixel": pixel, "goals": goals})
        return
    if a.image_base != "patchcore":  # one variant, image scores paired with another candidate than patchcore
        imgs = sorted(set((a.images or a.image_base).split(",")) | {a.image_base, "patchcore"})
        sets = [
            study_set(os.path.join(a.root, s, a.variant), a.boot, 0, a.cache, a.pro_stride, imgs, ("ratio",))
            for s in names
        ]
        paired = summarise(sets, "image", a.image_base)
        verdict = replaces_served(summarise(sets, "image", "patchcore"), paired, a.image_base)
        print(f"## {a.variant}: image scores paired with `{a.image_base}`\n")
        print(table(paired, names, False))
        print(f"\nReplaces `{a.image_base}` (issue 25's rule)?\n")
        print("\n".join(f"- `{n}`: {v}" for n, v in verdict.items()))
        save_json(a, {"variant": a.variant, "image_base": a.image_base, "image": paired, "replaces": verdict})
        return
    if a.against:
        imgs = a.images.split(",") if a.images else None
        mps = a.maps.split(",") if a.maps else None

        def run(variant, images, dense=None):
            return [
                study_set(os.path.join(a.root, s, variant), a.boot, 0, a.cache, a.pro_stride, images, mps, (), dense)
                for s in names
            ]

        base_imgs = [a.against_image] if a.against_image else imgs  # the base's own score only, when one is named
        var, base = run(a.variant, imgs, a.dense), run(a.against, base_imgs)
        image, pixel = versus(var, base, "image", a.against_image), versus(var, base, "pixel")
        print(
            f"## {a.variant} vs {a.against}"
            + (f" (every image score vs its `{a.against_image}`)" if a.against_image else "")
            + ": "
            + ", ".join(
                f"{s['set']} ({len(s['splits'])} splits, {sum(sp['n_test'] for sp in s['splits'])} test images)"
                for s in var
            )
        )
        print("\n" + versus_table(image, names, "image score") + "\n\n" + versus_table(pixel, names, "map"))
        print("\n" + steadiness_table(image, names))
        rule4 = rule4_verdict(image, pixel, len(names)) if a.rule4 else None
        if rule4:
            print(f"\nRule 4: C ({RULE4[0]} of {a.variant}) against the served dual_b01 of {a.against}:")
            print("\n".join(f"- {k}: {v}" for k, v in rule4.items()))
        save_json(
            a,
            {
                "variant": a.variant,
                "against": a.against,
                "against_image": a.against_image,
                "image": image,
                "pixel": pixel,
                "rule4": rule4,
            },
        )
        return
    imgs = sorted(set(a.images.split(",")) | {"patchcore"}) if a.images else None
    mps = sorted(set(a.maps.split(",")) | {"ratio"}) if a.maps else None
    sets = [
        study_set(os.path.join(a.root, s, a.variant), a.boot, 0, a.cache, a.pro_stride, imgs, mps, (), a.dense)
        for s in names
    ]
    image = summarise(sets, "image", "patchcore")
    pixel = summarise(sets, "pixel", "ratio")
    dec = decide(image, pixel)
    desc = ", ".join(
        f"{s['set']} ({len(s['splits'])} splits, {sum(sp['n_test'] for sp in s['splits'])} test images)" for s in sets
    )
    print(f"## {a.variant}: {desc}\n")
    print("### Image level: paired difference vs `patchcore`\n")
    print(table(image, names, False))
    print("\n" + steadiness_table(image, names))
    print("\n### Pixel level: paired difference vs the ratio map\n")
    print(table(pixel, names, True))
    print(f"\nDecision: image score `{dec['image']}` ({dec['image_why']}); map `{dec['map']}` ({dec['map_why']}).")
    if a.json:
        slim = [
            {k: v for k, v in s.items() if k != "splits"}
            | {
                "splits": [
                    {k: v for k, v in sp.items() if k not in ("image", "pixel")}
                    | {
                        "image": {n: r["point"] for n, r in sp["image"].items()},
                        "pixel": {n: {"auroc": r["point"], "aupro": r["aupro"]} for n, r in sp["pixel"].items()},
                    }
                    for sp in s["splits"]
                ]
            }
            for s in sets
        ]
        save_json(a, {"variant": a.variant, "image": image, "pixel": pixel, "decision": dec, "sets": slim})


if __name__ == "__main__":
    main()
