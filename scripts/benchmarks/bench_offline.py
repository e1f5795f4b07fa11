"""Offline speed benchmarks on this machine: feature extraction and scoring vs bank size.

  .venv/bin/python -m scripts.benchmarks.bench_offline --weights ../shared/weights/wrn50-random0-bncal.safetensors
Prints markdown tables (medians of repeated runs).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch

from exdd.offline.features import build_extractor, grid_of
from exdd_scoring import Bank, BankPair, Scorer
from exdd_scoring.knn import bank_neighbors
from scripts.harness import latency_stats


def median_time(fn, repeats: int) -> float:
    """Median seconds of fn() over repeats calls after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return latency_stats(ts)["p50_ms"] / 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default="random:0")
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bank-sizes", default="1000,4000,16000,64000")
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    hw = (632, 224)
    model, info = build_extractor(a.weights, a.d, 0, hw)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, weights {info['weights']}\n")
    print("| extraction | batch | images/s | ms/image |\n|---|---|---|---|")
    for b in (1, 8):
        x = torch.randint(0, 256, (b,) + hw + (3,), dtype=torch.uint8)
        with torch.inference_mode():
            t = median_time(lambda: model(x), a.repeats)
        print(f"| torch CPU fp32, 632x224 | {b} | {b / t:.2f} | {1000 * t / b:.0f} |")
    grid = grid_of(hw)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((8,) + grid + (a.d,)).astype(np.float32)
    print(
        f"\n| scoring (numpy, d={a.d}, batch 8, maps included) | negative bank | positive bank | ms/image |"
        "\n|---|---|---|---|"
    )
    for n in (int(v) for v in a.bank_sizes.split(",")):
        neg = rng.standard_normal((n, a.d)).astype(np.float32)
        pos = rng.standard_normal((max(n // 10, 1000), a.d)).astype(np.float32)
        pair = BankPair(
            Bank(neg, bank_neighbors(neg, 3, np)), Bank(pos, bank_neighbors(pos, 3, np)), {"features": info, "k": 3}
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sc = Scorer(pair)
        t = median_time(lambda: sc.score(feats, map_modes=(sc.default_mode,), modes=(sc.default_mode,)), a.repeats)
        print(f"| | {n} | {pos.shape[0]} | {1000 * t / 8:.1f} |")


if __name__ == "__main__":
    main()
