"""The scorer's cost per image of each image score (issue 25: a candidate must stay within 10 % of today's cost).

The real Scorer (exdd_scoring) on banks of a dev set's size (random vectors: the cost of the nearest-neighbour search,
the maps and the pooling does not depend on the values), one batch at a time, as the served scorer runs it: the
evidence (both banks' exact chunked kNN and peaks), then per mode its image score plus the map it serves.
Prints per mode: ms/image of the evidence, of the score + served map, and the total against the default's total.

  .venv/bin/python -m scripts.studies.mode_cost --hw 632x224 --neg 3100 --pos 900      # ksdd1_dev's banks
"""

from __future__ import annotations

import argparse
import time
from typing import Dict

import numpy as np

from exdd_scoring import Bank, BankPair, Scorer
from exdd_scoring.knn import bank_neighbors
from exdd_scoring.scores import DEFAULT_MODE, HEAD_FEATURES
from exdd_scoring.scores import mode as get_mode
from scripts.harness import latency_stats

MODES = ("dual_bounded", "patchcore", "dual_topk", "ratio_topk", "head")


def pair_of(hw, d: int, n_neg: int, n_pos: int, seed: int = 0) -> BankPair:
    """Banks of random vectors of the given sizes, with a fitted-looking head (7 weights) in the manifest."""
    rng = np.random.default_rng(seed)
    neg, pos = (rng.standard_normal((n, d)).astype(np.float32) for n in (n_neg, n_pos))
    grid = [hw[0] // 8, hw[1] // 8]
    features = {
        "backbone": "wide_resnet50_2",
        "weights": "random:0",
        "input_size": list(hw),
        "layers": ["layer2", "layer3"],
        "grid": grid,
        "projection_seed": 0,
        "projection_sha256": "0" * 64,
        "d": d,
    }
    head = {"features": list(HEAD_FEATURES), "mean": [0.0] * 7, "scale": [1.0] * 7, "coef": [0.1] * 7, "intercept": 0.0}
    manifest = {"features": features, "k": 3, "scoring": {"head": head}}
    return BankPair(Bank(neg, bank_neighbors(neg, 3, np)), Bank(pos, bank_neighbors(pos, 3, np)), manifest)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hw", default="632x224")
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--neg", type=int, default=3100, help="negative bank size")
    ap.add_argument("--pos", type=int, default=900, help="positive bank size")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    hw = tuple(int(v) for v in a.hw.split("x"))
    sc = Scorer(pair_of(hw, a.d, a.neg, a.pos))
    feats = np.random.default_rng(1).standard_normal((a.batch,) + tuple(sc.grid) + (a.d,)).astype(np.float32)
    ev_s, mode_s = [], {m: [] for m in MODES}  # seconds per image
    for r in range(a.reps + 1):  # the first round warms up
        t0 = time.perf_counter()
        ev = sc.evidence(feats)
        t_ev = time.perf_counter() - t0
        for m in MODES:
            ev._maps.clear()  # each mode pays for its own maps
            t1 = time.perf_counter()
            get_mode(m).score(ev)
            ev.image_map(get_mode(m).map_kind)
            if r:
                mode_s[m].append((time.perf_counter() - t1) / a.batch)
        if r:
            ev_s.append(t_ev / a.batch)
    knn = latency_stats(ev_s)["p50_ms"]  # per image
    cost: Dict[str, float] = {m: latency_stats(v)["p50_ms"] for m, v in mode_s.items()}
    base = knn + cost[DEFAULT_MODE]
    print(
        f"scorer cost per image, {a.hw} (grid {sc.grid[0]}x{sc.grid[1]}), d = {a.d}, banks {a.neg} + {a.pos}, "
        f"batch {a.batch}, median of {a.reps}\n"
    )
    print("| image score | evidence (kNN) ms | score + served map ms | total ms | vs default total |")
    print("|---|---|---|---|---|")
    for m in MODES:
        tot = knn + cost[m]
        print(f"| {m} | {knn:.1f} | {cost[m]:.1f} | {tot:.1f} | {100 * (tot / base - 1):+.1f} % |")


if __name__ == "__main__":
    main()
