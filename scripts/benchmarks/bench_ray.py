"""Bank build on Ray against the single-process build: time, throughput and peak memory per process.

Builds the banks of the first --images training images of a KSDD2-layout dataset (symlinked into a
temporary subset) three ways: single process (torch on all cores), --ray with 1 extractor actor,
--ray with 2 actors (1 torch thread each), on a private local Ray sized to this machine. Peak memory
is polled (psutil, every 0.2 s) for the driver and every Ray worker process, so short peaks between
polls can be missed.

  nice -n 10 .venv/bin/python -m scripts.benchmarks.bench_ray --data ../shared/data/ksdd1_dev --images 32 \
      --input-size 320x112 --weights ../shared/weights/wrn50-random0-bncal.safetensors --out runs/bench_ray.json
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import threading
import time

import psutil

from scripts.common import EXDD, link_subset, mask_of
from scripts.harness import BenchResult, params_of


def subset(data: str, images: int, root: str) -> str:
    """The first `images` training images of data (with their masks), linked into root/subset/train."""
    src = os.path.join(data, "train")
    names = sorted(f for f in os.listdir(src) if f.endswith(".png") and not f.endswith("_GT.png"))[:images]
    paths = [os.path.join(src, f) for f in names]
    return os.path.dirname(link_subset(os.path.join(root, "subset", "train"), [(p, mask_of(p)) for p in paths]))


def run(cmd, name: str) -> dict:
    """Run cmd, polling the peak RSS of it and of its descendants (Ray workers) by role."""
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: dict = {}
    roles: dict = {}
    stop = threading.Event()

    def poll():
        root = psutil.Process(p.pid)
        while not stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                procs = []
            for q in procs:
                try:
                    rss = q.memory_info().rss
                    title = " ".join(q.cmdline()[:1])
                except psutil.Error:
                    continue
                peaks[q.pid] = max(peaks.get(q.pid, 0), rss)
                if title.startswith("ray::"):
                    roles[q.pid] = title
                elif q.pid == p.pid:
                    roles[q.pid] = "driver"
            stop.wait(0.2)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    out, err = p.communicate()
    stop.set()
    th.join()
    wall = time.time() - t0
    if p.returncode != 0:
        raise SystemExit(f"{name} failed:\n{err[-3000:]}")
    build_s = float(re.search(r"time: ([\d.]+)s", out).group(1))
    workers = {
        pid: v
        for pid, v in peaks.items()
        if roles.get(pid, "").startswith("ray::") and not roles[pid].startswith("ray::IDLE")
    }
    gb = 2**30
    return {
        "name": name,
        "wall_s": round(wall, 1),
        "build_s": build_s,
        "driver_peak_gb": round(peaks.get(p.pid, 0) / gb, 2),
        "worker_peak_gb_max": round(max(workers.values(), default=0) / gb, 2),
        "workers_seen": len(workers),
        "stdout": out,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--input-size", default="320x112")
    ap.add_argument("--weights", default="random:0")
    ap.add_argument("--chunk-rows", type=int, default=4000)
    ap.add_argument("--out", default="runs/bench_ray.json")
    a = ap.parse_args()
    exdd = EXDD + ["offline", "build"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ds = subset(a.data, a.images, tmp)
        common = ["--weights", a.weights, "--input-size", a.input_size, "--chunk-rows", str(a.chunk_rows)]
        configs = [
            ("single process (torch, 2 threads)", []),
            ("ray, 1 worker x 1 thread", ["--ray", "local", "--ray-workers", "1", "--ray-threads", "1"]),
            ("ray, 2 workers x 1 thread", ["--ray", "local", "--ray-workers", "2", "--ray-threads", "1"]),
        ]
        for name, extra in configs:
            r = run(
                exdd
                + [
                    ds,
                    "--out",
                    os.path.join(tmp, name.split(",")[0].replace(" ", "_") + str(len(rows))),
                    *common,
                    *extra,
                ],
                name,
            )
            r["images_per_s"] = round(a.images / r["build_s"], 3)
            print(
                f"{name}: build {r['build_s']:.1f} s ({r['images_per_s']:.3f} img/s), wall {r['wall_s']:.1f} s, "
                f"driver peak {r['driver_peak_gb']:.2f} GB, worker peak {r['worker_peak_gb_max']:.2f} GB "
                f"({r['workers_seen']} worker processes)",
                flush=True,
            )
            rows.append(r)
    res = {
        "data": a.data,
        "images": a.images,
        "input_size": a.input_size,
        "weights": a.weights,
        "chunk_rows": a.chunk_rows,
        "cpus": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
        "rows": rows,
    }
    BenchResult("bench_ray", params_of(a), res).save(a.out)


if __name__ == "__main__":
    main()
