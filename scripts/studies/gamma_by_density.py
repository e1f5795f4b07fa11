"""Image AUROC of the dual map's peak for several exponents, per study variant (issue 25, a diagnostic).

The served dual map is a- (a- / (a+ + eps_b01))^gamma with gamma = 1 (exdd_scoring.scores.DEFAULT_GAMMA). A denser
negative bank lowered that score's image AUROC while the peaks of a- alone (gamma 0) and of the ratio alone held or
rose; this prints, per set and variant, the mean over the study's splits (build seed 0) of the image AUROC of the
smoothed map's peak at each gamma, and of the bounded ratio map's peak. Unpaired means: a lead, not a decision.

  .venv/bin/python -m scripts.studies.gamma_by_density runs/decision --variants random-d256,random-d256-neg0.05
"""

from __future__ import annotations

import argparse
import glob
import os
from typing import Dict, List

import numpy as np

from exdd.metrics import auroc
from exdd_scoring import upsample_smooth_matrices
from scripts.common import smooth_maps
from scripts.studies.study_decision import SplitEvidence, load_split

SETS = "ksdd1_dev,magnetic_tile,bsdata_pitting"


def peak_aurocs(folder: str, gammas: List[float]) -> Dict[str, List[float]]:
    """Per exponent (and 'ratio'), the image AUROC of the smoothed map's peak on each split's test images."""
    out: Dict[str, List[float]] = {}
    for f in sorted(glob.glob(os.path.join(folder, "split*-build0.npz"))):
        meta, z = load_split(f)
        s_h, s_w = upsample_smooth_matrices(tuple(meta["grid"]), tuple(meta["input_size"]), 4.0)
        e = SplitEvidence(z, meta, "test", s_h, s_w)
        ratio = e.patch("ratio_b01")  # a- / (a+ + eps_b01), the served dual_b01 map's eps
        maps = {f"{g:g}": e.a_neg * ratio**g for g in gammas}
        maps["ratio"] = ratio
        for name, pm in maps.items():
            m = smooth_maps(pm.reshape(-1, *e.grid), s_h, s_w)
            out.setdefault(name, []).append(auroc(m.reshape(m.shape[0], -1).max(1), e.labels))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", help="the --out folder of study_splits.py")
    ap.add_argument("--variants", default="random-d256,random-d256-neg0.05")
    ap.add_argument("--sets", default=SETS)
    ap.add_argument("--gammas", default="0,0.5,1,2,4")
    a = ap.parse_args()
    gammas = [float(g) for g in a.gammas.split(",")]
    cols = [f"{g:g}" for g in gammas] + ["ratio"]
    print("| set | variant | " + " | ".join(f"gamma {c}" if c != "ratio" else "ratio_b01" for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for s in a.sets.split(","):
        for v in a.variants.split(","):
            res = peak_aurocs(os.path.join(a.root, s, v), gammas)
            print(f"| {s} | {v} | " + " | ".join(f"{np.mean(res[c]):.3f}" for c in cols) + " |", flush=True)


if __name__ == "__main__":
    main()
