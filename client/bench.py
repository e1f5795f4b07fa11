"""`exdd client bench`: throughput and latency over a grid of batch size x concurrency."""
from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List

import numpy as np

from .connection import Connection, ModelInfo


def bench_point(conn_factory: Callable[[], Connection], info: ModelInfo, batch: int, concurrency: int,
                requests: int, images: np.ndarray) -> Dict[str, float]:
    """Send `requests` requests of `batch` images with `concurrency` in flight; images/s and latency percentiles."""
    local = threading.local()
    data = np.stack([images[i % len(images)] for i in range(batch)])

    def one(_: int) -> float:
        c = getattr(local, "c", None) or conn_factory()
        local.c = c
        t = time.perf_counter()
        c.infer(data)
        return (time.perf_counter() - t) * 1000

    with ThreadPoolExecutor(concurrency) as ex:
        list(ex.map(one, range(concurrency)))            # warm-up, one per worker
        t0 = time.perf_counter()
        lat = list(ex.map(one, range(requests)))
        secs = time.perf_counter() - t0
    return {"batch": batch, "concurrency": concurrency, "requests": requests,
            "images_per_s": requests * batch / secs, "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)), "p99_ms": float(np.percentile(lat, 99))}


def table(rows: List[Dict[str, float]]) -> str:
    """A markdown table of bench points."""
    out = ["| batch | concurrency | images/s | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|---|"]
    out += [f"| {r['batch']} | {r['concurrency']} | {r['images_per_s']:.2f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
            f"{r['p99_ms']:.1f} |" for r in rows]
    return "\n".join(out)


def perf_analyzer_input(path: str, image: np.ndarray) -> str:
    """Write a perf_analyzer --input-data JSON file holding one real image; returns its path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump({"data": [{"IMAGE": {"content": image.reshape(-1).astype(int).tolist(),
                                       "shape": list(image.shape)}}]}, f)
    return path
