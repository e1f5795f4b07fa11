"""A simulated large coreset on Ray: more patch rows than one process may hold, chunk by chunk on workers.

Real patches (the normal training images of a raw-feature cache of scripts/studies/sweep_d.py, projected
to d) are tiled with jitter, as scripts/benchmarks/bench_coreset.py `scale` does, into --n rows that Ray tasks
generate straight into the object store in parts; the distributed chunked greedy k-center
(offline/distributed.py) then selects the bank. The single-process build of the same rows is run
under the per-process address-space cap --cap-gb (RLIMIT_AS) and fails to hold them. For each Ray
process the peak anonymous memory (its own heap: /proc/PID/smaps_rollup "Anonymous", which leaves
out the object store's shared-memory pages it maps) and RSS are polled every 0.2 s, per phase
(generating the rows, then the coreset).

On one machine the object store (shared memory) still holds all rows: what Ray bounds here is
each process's memory, and on a cluster the parts live in the object stores of the nodes that made them.

  nice -n 10 .venv/bin/python -m scripts.benchmarks.bench_ray_scale \
      --cache /work/main/runs/cache/ksdd1_dev-632x224/train \
      --n 3000000 --cap-gb 1.5 --out runs/bench_ray_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import psutil

from exdd import defaults
from scripts.common import normal_rows
from scripts.harness import BenchResult, params_of


def make_part(base: np.ndarray, lo: int, hi: int, seed: int) -> np.ndarray:
    """Rows lo:hi of the tiling of base, jittered per repetition (float16)."""
    rng = np.random.default_rng(seed)
    out = np.empty((hi - lo, base.shape[1]), dtype=np.float16)
    i = lo
    while i < hi:
        r, j = divmod(i, len(base))
        m = min(hi - i, len(base) - j)
        out[i - lo : i - lo + m] = base[j : j + m] + (rng.standard_normal((m, base.shape[1])) * 0.05 * r).astype(
            np.float16
        )
        i += m
    return out


SINGLE = """
import resource, sys, numpy as np
cap = int(float(sys.argv[1]) * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
n, d = int(sys.argv[2]), int(sys.argv[3])
try:
    x = np.empty((n, d), dtype=np.float16); x[:] = 0
    from exdd.offline.coreset import chunked_kcenter
    chunked_kcenter(x, int(sys.argv[4]), chunk_rows=int(sys.argv[5]))
    print("completed")
except MemoryError as e:
    print("MemoryError:", e)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True)
    ap.add_argument("--n", type=int, default=3_000_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--ratio", type=float, default=0.001)
    ap.add_argument("--chunk-rows", type=int, default=defaults.CHUNK_ROWS)
    ap.add_argument("--part-rows", type=int, default=250_000)
    ap.add_argument("--cap-gb", type=float, default=1.5)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--out", default="runs/bench_ray_scale.json")
    a = ap.parse_args()
    from exdd.offline.build import BuildConfig
    from exdd.offline.coreset import bank_size

    k = bank_size(a.n, a.ratio, 1000)
    single = subprocess.run(
        [sys.executable, "-c", SINGLE, str(a.cap_gb), str(a.n), str(a.d), str(k), str(a.chunk_rows)],
        capture_output=True,
        text=True,
    )
    single_out = (single.stdout + single.stderr).strip().splitlines()[-1:] or [f"exit {single.returncode}"]
    print(f"single process, RLIMIT_AS {a.cap_gb} GB: {single_out[0]}", flush=True)

    import ray

    from exdd.offline.distributed import Part, RayBuild

    store = int(a.n * a.d * 2 * 1.3) + (512 << 20)
    ray.init(
        num_cpus=a.cpus,
        object_store_memory=store,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    me = psutil.Process()
    peaks: dict = {}
    phase = {"now": "generate"}
    stop = threading.Event()

    def anon(pid: int) -> int:
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Anonymous:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def poll():
        while not stop.is_set():
            for q in psutil.process_iter(["pid", "cmdline"]):
                cmd = " ".join((q.info["cmdline"] or [])[:1])
                if q.pid != me.pid and not cmd.startswith("ray::"):
                    continue
                try:
                    rss = q.memory_info().rss
                except psutil.Error:
                    continue
                key = (phase["now"], "driver" if q.pid == me.pid else "worker", q.pid)
                old = peaks.get(key, (0, 0))
                peaks[key] = (max(old[0], anon(q.pid)), max(old[1], rss))
            stop.wait(0.2)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    t0 = time.time()
    base = ray.put(normal_rows(a.cache, a.d, a.images))
    gen = ray.remote(num_cpus=1)(make_part)
    bounds = list(range(0, a.n, a.part_rows)) + [a.n]
    refs = [gen.remote(base, lo, hi, 1000 + i) for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))]
    ray.wait(refs, num_returns=len(refs))
    parts = [Part(hi - lo, r, 0, []) for r, lo, hi in zip(refs, bounds[:-1], bounds[1:])]
    t_gen = time.time() - t0
    rb = RayBuild(
        ray,
        "random:0",
        {"d": a.d, "projection_seed": 0, "input_size": [64, 64]},
        BuildConfig(chunk_rows=a.chunk_rows),
        workers=1,
    )
    phase["now"] = "coreset"
    t1 = time.time()
    cs = rb.kcenter(parts, k)
    picked = rb.gather(parts, np.sort(cs.indices))
    t_cs = time.time() - t1
    stop.set()
    th.join()
    gb = 2**30

    def peak(ph: str, role: str, i: int) -> float:
        return round(max((v[i] for k, v in peaks.items() if k[0] == ph and k[1] == role), default=0) / gb, 2)

    res = {
        "n": a.n,
        "d": a.d,
        "k": k,
        "selected": int(len(cs.indices)),
        "picked_rows_shape": list(picked.shape),
        "feature_rows_gb": round(a.n * a.d * 2 / gb, 2),
        "chunk_rows": a.chunk_rows,
        "parts": len(parts),
        "part_rows": a.part_rows,
        "cpus": a.cpus,
        "single_process_capped": single_out[0],
        "cap_gb": a.cap_gb,
        "generate_s": round(t_gen, 1),
        "coreset_s": round(t_cs, 1),
        "radius_bound": round(cs.radius, 4),
        "peaks_gb": {
            ph: {
                "driver_anon": peak(ph, "driver", 0),
                "driver_rss": peak(ph, "driver", 1),
                "worker_anon_max": peak(ph, "worker", 0),
                "worker_rss_max": peak(ph, "worker", 1),
            }
            for ph in ("generate", "coreset")
        },
        "load_avg_at_end": os.getloadavg(),
    }
    print(json.dumps(res, indent=1))
    BenchResult("bench_ray_scale", params_of(a), res).save(a.out)
    ray.shutdown()


if __name__ == "__main__":
    main()
