"""Rule 5 (c): the kNN work a two-stage score adds per image against today's kNN, timed with the scorer's own kNN.

Today the scorer searches every patch of a batch in the negative bank (1 %) and in the positive bank
(exdd_scoring.knn.nearest, chunked as served). The two-stage score (scripts/studies/study_decision.TWO_STAGE) adds:
the top ceil(q x P) patches per image of a patch map, then those patches searched in the rows the denser bank adds.
Banks of random vectors of each dev set's study sizes (the search's cost does not depend on the values). Prints per
set: ms/image of today's two searches, of the added stage, and the ratio; the median of --repeats batches.

  .venv/bin/python -m scripts.studies.two_stage_cost --q 0.06 --json runs/decision/two-stage-cost.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Dict, List

import numpy as np

from exdd_scoring.knn import nearest, sq_norms
from exdd_scoring.scores import topk_count
from scripts.harness import BenchResult, params_of

# set -> (patch grid, negative bank 1 %, negative bank 2.5 %, positive bank) as built by the study's split 0 (build 0)
SIZES: Dict[str, tuple] = {
    "ksdd1_dev": ((79, 28), 3075, 7687, 295),
    "magnetic_tile": ((40, 28), 3024, 7560, 1118),
    "bsdata_pitting": ((40, 98), 8036, 20090, 763),
}


def time_set(grid: tuple, n_neg: int, n_dense: int, n_pos: int, d: int, batch: int, q: float, repeats: int) -> Dict:
    """Median ms/image of today's kNN (negative + positive bank) and of the added stage, over `repeats` batches."""
    rng = np.random.default_rng(0)
    P = grid[0] * grid[1]
    neg, extra, pos = (rng.standard_normal((n, d)).astype(np.float32) for n in (n_neg, n_dense - n_neg, n_pos))
    neg_sq, extra_sq, pos_sq = (sq_norms(b, np) for b in (neg, extra, pos))
    today: List[float] = []
    added: List[float] = []
    kq = topk_count(P, q)
    for r in range(repeats):
        flat = rng.standard_normal((batch * P, d)).astype(np.float32)
        t0 = time.perf_counter()
        a_neg, _ = nearest(flat, neg, np, neg_sq)
        a_pos, _ = nearest(flat, pos, np, pos_sq)
        t1 = time.perf_counter()
        dual = (a_neg * (a_neg / (a_pos + 0.1)) ** 2).reshape(batch, P)
        cand = np.argpartition(dual, P - kq, axis=1)[:, P - kq :]
        rows = (cand + (np.arange(batch) * P)[:, None]).ravel()
        d_extra, _ = nearest(flat[rows], extra, np, extra_sq)
        np.minimum(a_neg[rows], d_extra)
        t2 = time.perf_counter()
        today.append((t1 - t0) * 1e3 / batch)
        added.append((t2 - t1) * 1e3 / batch)
    ms_today, ms_added = statistics.median(today), statistics.median(added)
    return {
        "patches": P,
        "candidates": kq,
        "banks": [n_neg, n_dense - n_neg, n_pos],
        "ms_today": ms_today,
        "ms_added": ms_added,
        "ratio": ms_added / ms_today,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--q", type=float, default=0.06, help="candidate fraction of the patches")
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    out = {}
    print("| set | patches | candidates | today's kNN ms/image | added ms/image | added / today |")
    print("|---|---|---|---|---|---|")
    for name, (grid, n_neg, n_dense, n_pos) in SIZES.items():
        r = time_set(grid, n_neg, n_dense, n_pos, a.d, a.batch, a.q, a.repeats)
        out[name] = r
        print(
            f"| {name} | {r['patches']} | {r['candidates']} | {r['ms_today']:.1f} | {r['ms_added']:.2f} | "
            f"{100 * r['ratio']:.1f} % |"
        )
    if a.json:
        BenchResult("two_stage_cost", params_of(a), out).save(a.json)


if __name__ == "__main__":
    main()
