"""`exdd client bench`: throughput and latency over a grid of batch size x concurrency, for what a client sends:
``array`` (decoded and resized here: input IMAGE at the model-input size), ``bytes`` (the encoded files: input
IMAGE_BYTES) or ``raw`` (decoded here at their own size: input IMAGE, resized by the server)."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Sequence, Union

import numpy as np

from .connection import Batch, Connection, ModelInfo

SENDS = ("array", "bytes", "raw")
Item = Union[np.ndarray, bytes]


def payload_bytes(item: Item) -> int:
    """The tensor bytes one image takes in a request (the encoded file's length, or the array's size)."""
    return item.nbytes if isinstance(item, np.ndarray) else len(item)


def bench_point(
    conn_factory: Callable[[], Connection],
    info: ModelInfo,
    batch: int,
    concurrency: int,
    requests: int,
    images: Sequence[Item],
) -> Dict[str, float]:
    """Send `requests` requests of `batch` images with `concurrency` in flight; images/s, latency percentiles and
    the tensor bytes sent per image. images: uint8 arrays of one shape, or encoded files' bytes."""
    local = threading.local()
    items = [images[i % len(images)] for i in range(batch)]
    data: Batch = np.stack(items) if isinstance(items[0], np.ndarray) else [b for b in items if isinstance(b, bytes)]

    def one(_: int) -> float:
        c = getattr(local, "c", None) or conn_factory()
        local.c = c
        t = time.perf_counter()
        c.infer(data)
        return (time.perf_counter() - t) * 1000

    with ThreadPoolExecutor(concurrency) as ex:
        list(ex.map(one, range(concurrency)))  # warm-up, one per worker
        t0 = time.perf_counter()
        lat = list(ex.map(one, range(requests)))
        secs = time.perf_counter() - t0
    return {
        "batch": batch,
        "concurrency": concurrency,
        "requests": requests,
        "images_per_s": requests * batch / secs,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
        "bytes_per_image": sum(payload_bytes(x) for x in items) / batch,
    }


def table(rows: List[Dict[str, float]]) -> str:
    """A markdown table of bench points."""
    out = [
        "| batch | concurrency | images/s | p50 ms | p95 ms | p99 ms | bytes/image |",
        "|---|---|---|---|---|---|---|",
    ]
    out += [
        f"| {r['batch']} | {r['concurrency']} | {r['images_per_s']:.2f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
        f"{r['p99_ms']:.1f} | {r['bytes_per_image']:.0f} |"
        for r in rows
    ]
    return "\n".join(out)


def perf_analyzer_input(path: str, item: Item) -> str:
    """Write a perf_analyzer --input-data JSON file holding one real image (an array: IMAGE; encoded bytes:
    IMAGE_BYTES, base64 as perf_analyzer reads binary data); returns its path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    if isinstance(item, np.ndarray):
        entry = {"IMAGE": {"content": item.reshape(-1).astype(int).tolist(), "shape": list(item.shape)}}
    else:
        entry = {"IMAGE_BYTES": {"b64": base64.b64encode(item).decode("ascii"), "shape": [1]}}
    with open(path, "w") as f:
        json.dump({"data": [entry]}, f)
    return path
