#!/usr/bin/env python
"""Server memory and throughput for 1 vs N products: one server sharing exdd_features vs one server per product.

Generates N small surface datasets of different textures, builds one bank directory per product
(same extractor), exports the extractor to ONNX once, and measures three set-ups on the bundled
tritonserver (Python-backend features, CPU):

- ``1 product``: one server, one product;
- ``N products, 1 server``: one server, one shared ``exdd_features``, N scorers and ensembles
  (``exdd export repository --product``);
- ``N products, N servers``: what a plant needed before: N one-product servers running at once.

Memory: RSS and PSS (proportional set size: shared pages split between the processes that map them,
so sums are not double-counted) of every tritonserver and its Python-backend stub processes, read
from /proc after warm-up and after the throughput runs. Throughput: closed loop, --concurrency senders
(one HTTP client each), single-image requests spread round-robin over the products (and servers);
--repeats runs of --requests images each, median images/s reported.

    python -m scripts.benchmarks.bench_products --weights ../shared/weights/wrn50-random0-bncal.safetensors \\
        --products 4 --out runs/bench/products.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from typing import Dict, List

import numpy as np

from scripts.common import process_tree
from scripts.harness import (
    BenchResult,
    build_banks,
    export_onnx,
    export_repository,
    latency_stats,
    params_of,
    start_server,
)

TEXTURES = ("brushed", "commutator", "tile")


def memory_mb(pids: List[int]) -> Dict[str, float]:
    """Summed RSS and PSS (MiB) and the process count of pids (smaps_rollup; processes gone meanwhile are skipped)."""
    rss = pss = 0.0
    n = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                fields = {ln.split(":")[0]: float(ln.split()[1]) for ln in f if ln.split()[-1:] == ["kB"]}
        except OSError:
            continue
        rss += fields.get("Rss", 0.0)
        pss += fields.get("Pss", 0.0)
        n += 1
    return {"rss_mb": round(rss / 1024, 1), "pss_mb": round(pss / 1024, 1), "processes": n}


def servers_memory(servers) -> Dict[str, float]:
    """memory_mb of every server's process tree together."""
    pids = [p for s in servers for p in process_tree(s.proc.pid)]
    return memory_mb(pids)


def throughput(targets, image: np.ndarray, requests: int, concurrency: int) -> Dict[str, float]:
    """Closed loop: concurrency senders, requests single-image requests in all, request i to targets[i % len]."""
    import tritonclient.http as th

    counter = {"i": 0}
    lock = threading.Lock()
    lat: List[float] = []
    errors: List[str] = []

    def sender():
        clients = {}
        try:
            while True:
                with lock:
                    i = counter["i"]
                    counter["i"] += 1
                if i >= requests:
                    return
                url, model = targets[i % len(targets)]
                c = clients.get(url) or clients.setdefault(url, th.InferenceServerClient(url, network_timeout=300))
                inp = th.InferInput("IMAGE", list(image.shape), "UINT8")
                inp.set_data_from_numpy(image)
                t = time.perf_counter()
                try:
                    c.infer(model, [inp])
                    lat.append(time.perf_counter() - t)
                except Exception as e:  # counted
                    errors.append(repr(e))
        finally:
            for c in clients.values():
                c.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=sender) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    p50 = latency_stats(lat)["p50_ms"]
    return {"ips": len(lat) / wall, "p50_ms": float("nan") if p50 is None else p50, "errors": len(errors)}


def measure(name: str, servers, targets, image, a) -> Dict:
    """Memory after warm-up, throughput runs (median), memory after them."""
    for url, model in targets:  # warm every product's path once, then batches of every size
        throughput([(url, model)], image, 2, 1)
    throughput(targets, image, 4 * a.concurrency, a.concurrency)
    warm = servers_memory(servers)
    runs = [throughput(targets, image, a.requests, a.concurrency) for _ in range(a.repeats)]
    after = servers_memory(servers)
    ips = [r["ips"] for r in runs]
    row = {
        "setup": name,
        "servers": len(servers),
        "products": len({m for _, m in targets}),
        "memory_warm": warm,
        "memory_after": after,
        "ips_runs": [round(v, 3) for v in ips],
        "ips_median": round(statistics.median(ips), 3),
        "p50_ms_median": round(statistics.median(r["p50_ms"] for r in runs), 1),
        "errors": sum(r["errors"] for r in runs),
    }
    print(
        f"{name}: {after['pss_mb']:.0f} MiB PSS, {after['rss_mb']:.0f} MiB RSS, {after['processes']} processes; "
        f"{row['ips_median']:.2f} img/s (runs {row['ips_runs']}), errors {row['errors']}",
        flush=True,
    )
    return row


def build(work: str, a) -> Dict:
    """N datasets, N bank directories, one ONNX; the paths."""
    from exdd.offline.surfaces import generate

    h, w = (int(v) for v in a.input_size.split("x"))
    banks = {}
    for k in range(a.products):
        ds = generate(os.path.join(work, f"ds{k}"), a.train_images, 4, 2, 2, (h, w), TEXTURES[k % len(TEXTURES)], k)
        banks[f"p{k}"] = os.path.join(work, f"banks{k}")
        build_banks(
            ds, banks[f"p{k}"], "--weights", a.weights, "--input-size", a.input_size, "--d", str(a.d), log=print
        )
    onnx = os.path.join(work, "features.onnx")
    export_onnx(
        banks["p0"],
        onnx,
        "--weights",
        a.weights,
        "--parity-images",
        os.path.join(work, "ds0", "test"),
        "--parity-count",
        "2",
        log=print,
    )
    return {"banks": banks, "onnx": onnx, "test": os.path.join(work, "ds0", "test")}


def repository(work: str, name: str, onnx: str, banks: Dict[str, str]) -> str:
    """exdd export repository --product NAME=BANKS for each product given."""
    out = os.path.join(work, name)
    export_repository(onnx, out, "--features-backend", "python", "--force", products=banks, log=print)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--products", type=int, default=4)
    ap.add_argument("--input-size", default="320x128")
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--train-images", type=int, default=12, help="Normal training images per product.")
    ap.add_argument("--requests", type=int, default=48, help="Images per throughput run.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--skip-separate", action="store_true", help="Leave out the N one-product servers.")
    ap.add_argument("--work", default=None, help="Build here and keep it (default: a temporary directory).")
    ap.add_argument("--out", default=None, help="JSON record.")
    a = ap.parse_args()
    from exdd.export.onnx_export import image_files, load_images
    from exdd.serving.products import products_in

    work = a.work or tempfile.mkdtemp(prefix="exdd-bench-products-")
    os.makedirs(work, exist_ok=True)
    made = build(work, a)
    h, w = (int(v) for v in a.input_size.split("x"))
    image = load_images(image_files(made["test"], 1), (h, w))
    names = list(made["banks"])
    rec = BenchResult(
        "bench_products",
        params_of(a),
        {"cpus": os.cpu_count(), "onnx_mb": round(os.path.getsize(made["onnx"]) / 2**20, 1), "rows": []},
    )
    setups = [
        ("1 product", [repository(work, "repo-1", made["onnx"], {names[0]: made["banks"][names[0]]})]),
        (f"{a.products} products, 1 server", [repository(work, f"repo-{a.products}", made["onnx"], made["banks"])]),
    ]
    if not a.skip_separate:
        setups.append(
            (
                f"{a.products} products, {a.products} servers",
                [repository(work, f"repo-only-{p}", made["onnx"], {p: made["banks"][p]}) for p in names],
            )
        )
    for label, repos in setups:
        servers = []
        try:
            for r in repos:
                servers.append(start_server(r, r + ".log", 600.0, exit_timeout=5))
            targets = [(s.http_url, pm.ensemble) for s in servers for pm in products_in(s.repo)]
            rec.metrics["rows"].append(measure(label, servers, targets, image, a))
        finally:
            for s in servers:
                s.stop()
    print("\n| set-up | servers | products | memory PSS (MiB) | memory RSS (MiB) | processes | images/s (median) |")
    print("|---|---|---|---|---|---|---|")
    for r in rec.metrics["rows"]:
        m = r["memory_after"]
        print(
            f"| {r['setup']} | {r['servers']} | {r['products']} | {m['pss_mb']:.0f} | {m['rss_mb']:.0f} | "
            f"{m['processes']} | {r['ips_median']:.2f} |"
        )
    if a.out:
        rec.save(a.out)
        print(f"record: {a.out}")


if __name__ == "__main__":
    main()
