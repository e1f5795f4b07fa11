"""Rules 6 and 7 (docs/decision-study.md): steadier decision thresholds against the build's F1 threshold.

For every split of the decision study (scripts/studies/study_splits.py evidence, build seeds 0 and 1): each image
score on the held-out images (as the build scores them: study_decision.split_scores with key 'held') and on the
cross-fitted defective training images (crossfit_scores), today's threshold (offline.calibrate.threshold, rule
f1), rule 6's T_bag (bagged_f1_threshold) and rule 7's T_cf (offline.calibrate.crossfit_threshold, which the
build uses since rule 7 passed); then on the test images the F1
at each threshold under the protocol's image-weight resamples, and how many test images the two builds decide
alike (each at its own threshold). Prints the paired tables and each rule's verdict for the served score.

  .venv/bin/python -m scripts.studies.threshold_study runs/decision --variant random-d256 \
      --images dual_b01,dual_topk@0.01,patchcore --json runs/decision/threshold-rules.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from typing import Dict, List, Sequence

import numpy as np

from exdd.defaults import TARGET_FPR
from exdd.metrics import f1_max
from exdd.offline.calibrate import crossfit_threshold, threshold
from exdd_scoring import upsample_smooth_matrices
from scripts.harness import BenchResult, params_of
from scripts.studies.study_decision import SETS, agreement, ci, crossfit_scores, load_split, split_scores

SERVED = "dual_b01"
N_BAG = 200


def bagged_f1_threshold(scores: np.ndarray, labels: np.ndarray, n: int = N_BAG, seed: int = 0) -> float:
    """T_bag: the median over n bootstrap resamples (per label, so both classes stay) of the F1-optimal threshold;
    without both classes, the build's own fallback (threshold(..., 'f1', ...))."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(int)
    i0, i1 = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    if i0.size == 0 or i1.size == 0:
        return float(threshold(scores, labels, "f1", TARGET_FPR)["value"])
    rng = np.random.default_rng(seed)
    ts = [
        f1_max(scores[r], labels[r])[1]
        for r in (np.concatenate([rng.choice(i0, i0.size), rng.choice(i1, i1.size)]) for _ in range(n))
    ]
    return float(np.median(ts))


def weighted_f1(scores: np.ndarray, labels: np.ndarray, t: float, w: np.ndarray) -> np.ndarray:
    """(R,) F1 of 'score >= t' under R weight vectors w (R, n) over the n images."""
    pred, y = np.asarray(scores) >= t, np.asarray(labels).astype(bool)
    tp, fp, fn = w[:, pred & y].sum(1), w[:, pred & ~y].sum(1), w[:, ~pred & y].sum(1)
    return 2 * tp / np.maximum(2 * tp + fp + fn, 1e-12)


RULES = ("f1", "bag", "cf")  # today's, rule 6's T_bag, rule 7's T_cf


def thresholds(held_scores: np.ndarray, labels: np.ndarray, crossfit: np.ndarray) -> Dict[str, float]:
    """The threshold by each rule of RULES."""
    return {
        "f1": float(threshold(held_scores, labels, "f1", TARGET_FPR)["value"]),
        "bag": bagged_f1_threshold(held_scores, labels),
        "cf": float(crossfit_threshold(held_scores, labels, crossfit, "f1", TARGET_FPR)["value"]),
    }


def study_set(folder: str, names: Sequence[str], n_boot: int) -> Dict:
    """Per split: each score's test F1 (point, resamples) at each rule's threshold (mean of the two builds) and
    the two builds' agreement at each rule."""
    files = sorted(glob.glob(os.path.join(folder, "split*-build0.npz")))
    meta0 = json.load(open(files[0][:-4] + ".json"))
    w_all = np.random.default_rng(0).poisson(1.0, (n_boot, len(meta0["paths"]))).astype(np.float64)
    s_h, s_w = upsample_smooth_matrices(tuple(meta0["grid"]), tuple(meta0["input_size"]), 4.0)
    splits = []
    for f in files:
        builds = []
        for bf in (f, f.replace("-build0.npz", "-build1.npz")):
            meta, z = load_split(bf)
            held, hs, _, _ = split_scores(z, meta, s_h, s_w, names, key="held")
            te, ts, _, _ = split_scores(z, meta, s_h, s_w, names)
            cs = crossfit_scores(z, meta, s_h, s_w, names)
            per_name = {n: thresholds(hs[n], held.labels, cs[n]) for n in names}
            th = {r: {n: per_name[n][r] for n in names} for r in RULES}
            builds.append((te, ts, th))
        (te0, s0, t0), (te1, s1, t1) = builds
        if not np.array_equal(te0.ids, te1.ids):
            raise SystemExit(f"{f}: the two builds hold other test images")
        w, ones = w_all[:, te0.ids], np.ones((1, te0.ids.size))
        sp: Dict = {"file": os.path.basename(f), "f1": {}, "agreement": {}, "thresholds": {}}
        for r in RULES:
            for n in names:
                pair = [weighted_f1(s[n], te0.labels, t[r][n], x) for s, t in ((s0, t0), (s1, t1)) for x in (ones, w)]
                sp["f1"].setdefault(r, {})[n] = {
                    "point": float((pair[0][0] + pair[2][0]) / 2),
                    "boot": (pair[1] + pair[3]) / 2,
                }
                sp["agreement"].setdefault(r, {})[n] = agreement(s0[n], s1[n], t0[r][n], t1[r][n])
                sp["thresholds"].setdefault(r, {})[n] = [t0[r][n], t1[r][n]]
        splits.append(sp)
        print(
            f"{meta0['set']} {sp['file']}: "
            + ", ".join(
                f"{n} F1 "
                + "/".join(f"{sp['f1'][r][n]['point']:.3f}" for r in RULES)
                + " same "
                + "/".join(f"{sp['agreement'][r][n]:.1%}" for r in RULES)
                for n in names
            ),
            flush=True,
        )
    return {"set": meta0["set"], "splits": splits}


def summarise(sets: List[Dict], names: Sequence[str], cand: str) -> Dict[str, Dict]:
    """Per score: per set and pooled, F1 at each rule, the paired difference cand - f1 with its 90 % interval, and
    the agreement at each rule."""
    out: Dict[str, Dict] = {}
    for n in names:
        per, boots, diffs = {}, [], []
        for s in sets:
            sp = s["splits"]
            f1 = {r: float(np.mean([x["f1"][r][n]["point"] for x in sp])) for r in RULES}
            db = np.mean([x["f1"][cand][n]["boot"] - x["f1"]["f1"][n]["boot"] for x in sp], axis=0)
            per[s["set"]] = {
                "f1": f1,
                "diff": f1[cand] - f1["f1"],
                "diff_ci90": ci(db),
                "agreement": {r: float(np.mean([x["agreement"][r][n] for x in sp])) for r in RULES},
            }
            boots.append(db)
            diffs.append(f1[cand] - f1["f1"])
        out[n] = {
            "per_set": per,
            "pooled_diff": float(np.mean(diffs)),
            "pooled_ci90": ci(np.mean(boots, axis=0)),
            "pooled_agreement": {r: float(np.mean([v["agreement"][r] for v in per.values()])) for r in RULES},
        }
    return out


def rule6(res: Dict, cand: str = "bag") -> Dict[str, str]:
    """Rules 6 (cand 'bag') and 7 ('cf') as written, on the served score's summary against today's threshold:
    (a) F1 held, (b) agreement not lower on any set and higher pooled by >= 0.02. Per clause 'yes' or why not;
    'verdict': 'replace' or 'keep'."""
    r = res
    low = [f"{s} ({v['diff']:+.3f})" for s, v in r["per_set"].items() if v["diff"] < -0.03]
    out = {
        "pooled F1": "yes"
        if r["pooled_diff"] >= -0.01 and r["pooled_ci90"][0] > -0.03
        else f"no: {r['pooled_diff']:+.3f} [{r['pooled_ci90'][0]:+.3f}, {r['pooled_ci90'][1]:+.3f}]",
        "F1 every set": "no: " + ", ".join(low) if low else "yes",
    }
    lower = [s for s, v in r["per_set"].items() if v["agreement"][cand] < v["agreement"]["f1"]]
    gain = r["pooled_agreement"][cand] - r["pooled_agreement"]["f1"]
    out["agreement"] = (
        "yes"
        if not lower and gain >= 0.02
        else f"no: pooled {gain:+.3f}" + (f", lower on {', '.join(lower)}" if lower else "")
    )
    out["verdict"] = "replace" if all(v == "yes" for v in out.values()) else "keep"
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", help="the --out folder of study_splits.py")
    ap.add_argument("--variant", default="random-d256")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--images", default=f"{SERVED},dual_topk@0.01,patchcore")
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    names = a.images.split(",")
    if SERVED not in names:
        names.insert(0, SERVED)
    sets = [study_set(os.path.join(a.root, s, a.variant), names, a.boot) for s in a.sets.split(",")]
    order = [s["set"] for s in sets]
    payload: Dict = {"sets": sets}
    for cand, rule in (("bag", "6"), ("cf", "7")):
        res = summarise(sets, names, cand)
        head = " | ".join(f"{s}: test F1 today / {cand}; same IS_DEFECT today / {cand}" for s in order)
        print(f"\n| image score | pooled F1 diff, {cand} - today's [90% CI] | {head} |")
        print("|" + "---|" * (2 + len(order)))
        for n, r in res.items():
            cells = [
                f"{v['f1']['f1']:.3f} / {v['f1'][cand]:.3f}; {v['agreement']['f1']:.1%} / {v['agreement'][cand]:.1%}"
                for v in (r["per_set"][s] for s in order)
            ]
            ci90 = r["pooled_ci90"]
            print(f"| {n} | {r['pooled_diff']:+.3f} [{ci90[0]:+.3f}, {ci90[1]:+.3f}] | " + " | ".join(cells) + " |")
        verdict = rule6(res[SERVED], cand)
        print(f"\nRule {rule} ({cand}) on `{SERVED}`:")
        print("\n".join(f"- {k}: {v}" for k, v in verdict.items()))
        payload[cand] = {"summary": res, "verdict": verdict}
    if a.json:
        for s in sets:
            for sp in s["splits"]:
                for r in sp["f1"].values():
                    for v in r.values():
                        v.pop("boot")
        BenchResult("threshold_study", params_of(a), payload).save(a.json)


if __name__ == "__main__":
    main()
