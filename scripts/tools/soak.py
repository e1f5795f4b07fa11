"""Bounded soak test of a local Triton server (loopback only; stops by itself).

Starts `tritonserver` on a model repository on free 127.0.0.1 ports, drives it with
--concurrency client threads for --duration seconds, and reports requests, errors,
p50/p95/p99 latency and the RSS of the server and of each Python-backend stub (the scorer and
the features model) at start and end, sampled every --sample seconds.

  .venv/bin/python -m scripts.tools.soak --repo runs/demo/repository --duration 600 --concurrency 8
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from typing import Dict, List

import numpy as np

from exdd.client.connection import Connection
from scripts.common import process_tree
from scripts.harness import BenchResult, latency_stats, params_of, start_server


def tree_rss(pid: int) -> Dict[str, int]:
    """RSS in kB of a process and its descendants, keyed 'tritonserver' or the stub's model name."""
    out: Dict[str, int] = {}
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                rss = next((int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")), 0)
            cmd = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        name = "tritonserver"
        if b"triton_python_backend_stub" in cmd[0]:
            path = cmd[1].decode(errors="replace") if len(cmd) > 1 else "stub"
            name = next((m for m in ("exdd_scorer", "exdd_features") if f"/{m}/" in path), "stub")
        out[name] = out.get(name, 0) + rss
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True)
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--sample", type=float, default=10.0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    srv = start_server(a.repo, os.path.join(os.path.dirname(os.path.abspath(a.repo)), "soak-server.log"), 300)
    url = srv.grpc_url
    assert url.startswith("127."), "loopback only"
    info = Connection(url).info()
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (8, a.batch) + tuple(info.input_hw) + (3,), dtype=np.uint8)
    lat: List[float] = []
    errors: List[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + a.duration

    def worker(k: int) -> None:
        c = Connection(url)
        i = k
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                out = c.infer(imgs[i % len(imgs)])
                ok = np.isfinite(out["SCORE"]).all()
                with lock:
                    (lat.append(time.perf_counter() - t) if ok else errors.append("non-finite score"))
            except Exception as e:  # every failure is counted
                with lock:
                    errors.append(str(e)[:200])
            i += 1

    samples = [(0.0, tree_rss(srv.proc.pid))]
    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(a.concurrency)]
    for t in threads:
        t.start()
    while time.monotonic() < stop:
        time.sleep(min(a.sample, max(stop - time.monotonic(), 0.01)))
        samples.append((round(time.monotonic() - t0, 1), tree_rss(srv.proc.pid)))
    for t in threads:
        t.join(120)
    secs = time.monotonic() - t0
    srv.stop()
    names = sorted(samples[0][1])
    ms = latency_stats(lat)
    res = {
        "repo": os.path.abspath(a.repo),
        "duration_s": round(secs, 1),
        "concurrency": a.concurrency,
        "batch": a.batch,
        "requests": len(lat) + len(errors),
        "ok": len(lat),
        "errors": len(errors),
        "error_examples": errors[:5],
        "images_per_s": round(len(lat) * a.batch / secs, 3),
        **{k: round(ms[k], 1) if lat else None for k in ("p50_ms", "p95_ms", "p99_ms")},
        "rss_mb": {
            n: {
                "start": round(samples[0][1].get(n, 0) / 1024, 1),
                "after_first_minute": round(
                    next((s[1].get(n, 0) for s in samples if s[0] >= 60), samples[-1][1].get(n, 0)) / 1024, 1
                ),
                "end": round(samples[-1][1].get(n, 0) / 1024, 1),
                "max": round(max(s[1].get(n, 0) for s in samples) / 1024, 1),
            }
            for n in names
        },
        "samples": [(t, {k: round(v / 1024, 1) for k, v in s.items()}) for t, s in samples],
    }
    print(json.dumps({k: v for k, v in res.items() if k != "samples"}, indent=1))
    if a.out:
        BenchResult("soak", params_of(a), res).save(a.out)


if __name__ == "__main__":
    main()
