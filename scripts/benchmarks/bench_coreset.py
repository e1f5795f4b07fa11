"""Coreset benchmark: chunked greedy k-center against exact greedy, and time/memory vs N.

Uses real patch features (the magnetic-tile raw-feature cache of scripts/studies/sweep_d.py, projected
to d) when present, else clustered synthetic features.

  .venv/bin/python -m scripts.benchmarks.bench_coreset subset --images 100          # exact vs chunked radius and time
  .venv/bin/python -m scripts.benchmarks.bench_coreset scale --n 4600000            # KSDD2 scale: time and peak RSS
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time

import numpy as np

from exdd import defaults
from exdd.offline.coreset import bank_size, chunked_kcenter, coverage_radius, greedy_kcenter
from scripts.common import normal_rows, peak_rss_gb


def real_normals(d: int, images: int) -> np.ndarray:
    """Projected patch features of the first `images` normal training images of the cache (float16)."""
    folders = sorted(glob.glob("runs/cache/*/train"))
    return normal_rows(folders[0], d, images) if folders else None


def subset(a) -> dict:
    x = real_normals(a.d, a.images)
    src = "magnetic_tile normal train patches (stand-in weights)"
    if x is None:
        rng = np.random.default_rng(0)
        x = (
            rng.standard_normal((a.images * 2212, a.d))
            + rng.standard_normal((64, a.d))[rng.integers(64, size=a.images * 2212)] * 3
        ).astype(np.float16)
        src = "synthetic clustered features"
    k = bank_size(len(x), a.ratio, 1)
    t = time.perf_counter()
    ex = greedy_kcenter(x, k)
    t_exact = time.perf_counter() - t
    t = time.perf_counter()
    ch = chunked_kcenter(x, k, chunk_rows=a.chunk_rows, oversample=a.oversample)
    t_chunk = time.perf_counter() - t
    r_ch = coverage_radius(x, x[ch.indices])
    out = {
        "source": src,
        "n": len(x),
        "d": a.d,
        "k": k,
        "exact_s": round(t_exact, 1),
        "chunked_s": round(t_chunk, 1),
        "speedup": round(t_exact / t_chunk, 2),
        "exact_radius": round(ex.radius, 4),
        "chunked_radius": round(r_ch, 4),
        "chunked_radius_bound": round(ch.radius, 4),
        "radius_ratio": round(r_ch / ex.radius, 4),
        "chunk_rows": a.chunk_rows,
        "oversample": a.oversample,
    }
    return out


def scale(a) -> dict:
    base = real_normals(a.d, 10**6)
    rng = np.random.default_rng(0)
    if base is None:
        base = rng.standard_normal((1_000_000, a.d)).astype(np.float16)
    reps = int(np.ceil(a.n / len(base)))
    x = np.empty((a.n, a.d), dtype=np.float16)
    for r in range(reps):  # tile the real patches, jittered, up to n rows
        lo, hi = r * len(base), min((r + 1) * len(base), a.n)
        x[lo:hi] = base[: hi - lo] + (rng.standard_normal((hi - lo, a.d)) * 0.05 * r).astype(np.float16)
    del base
    k = bank_size(a.n, a.ratio, 1000)
    t = time.perf_counter()
    cs = chunked_kcenter(x, k, chunk_rows=a.chunk_rows, oversample=a.oversample)
    secs = time.perf_counter() - t
    return {
        "n": a.n,
        "d": a.d,
        "k": k,
        "selected": len(cs.indices),
        "seconds": round(secs, 1),
        "radius_bound": round(cs.radius, 4),
        "feature_array_gb": round(x.nbytes / 2**30, 2),
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "chunk_rows": a.chunk_rows,
        "oversample": a.oversample,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["subset", "scale"])
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--n", type=int, default=4_600_000)
    ap.add_argument("--ratio", type=float, default=0.01)
    ap.add_argument("--chunk-rows", type=int, default=defaults.CHUNK_ROWS)
    ap.add_argument("--oversample", type=float, default=2.0)
    a = ap.parse_args()
    res = subset(a) if a.what == "subset" else scale(a)
    print(json.dumps(res))


if __name__ == "__main__":
    sys.exit(main())
