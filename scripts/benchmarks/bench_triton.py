#!/usr/bin/env python
"""End-to-end images/s and latency through a local Triton server vs the offline in-process scorer.

Builds (unless --repo is given) banks from the first --build-n images of --dataset (linked into a
temporary train/ split, defects included), exports the extractor to ONNX, assembles a
Python-backend repository, starts the bundled tritonserver, and times the same --n images
(the ones after the build images) both ways. Prints a markdown table.

    python -m scripts.benchmarks.bench_triton --dataset /work/shared/data/magnetic_tile/test \
        --weights /work/shared/weights/wrn50-random0-bncal.safetensors --build-n 40 --n 16
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from scripts.common import link_subset, mask_of
from scripts.harness import latency_stats, serve_chain, start_server


def split(ds: str, build_n: int, n: int):
    """Evenly spaced build images (normal and defective alike) and n evenly spaced others to time."""
    from exdd.export.onnx_export import image_files

    everything = image_files(ds, 10**7)
    build = everything[:: max(1, len(everything) // build_n)][:build_n]
    rest = [p for p in everything if p not in set(build)]
    return build, rest[:: max(1, len(rest) // n)][:n]


def prepare(
    build_paths,
    ds: str,
    build_n: int,
    weights: str,
    input_size: str,
    d: int,
    work: str,
    backend: str,
    kind: str,
    instances: int,
) -> str:
    """Banks from the first build_n images, ONNX, repository; returns the repository path."""
    train = link_subset(os.path.join(work, "ds", "train"), [(p, mask_of(p)) for p in build_paths], numbered=True)
    return serve_chain(
        work,
        dataset=os.path.join(work, "ds"),
        build=(
            "--weights",
            weights,
            "--input-size",
            input_size,
            "--d",
            str(d),
            "--min-bank",
            "1000",
            "--holdout",
            "0.2",
        ),
        export=("--weights", weights, "--parity-images", train, "--parity-count", "2"),
        repository=("--features-backend", backend, "--kind", kind, "--instances", str(instances)),
    ).repo


def stats(lat_s, n_images: int, wall: float) -> dict:
    """images/s and the latency statistics (ms) of per-request seconds."""
    return {"ips": n_images / wall, **latency_stats(lat_s)}


def bench_offline(repo: str, images: np.ndarray, weights: str, batch: int) -> dict:
    """Torch extractor + NumPy Scorer in this process: batch-1 latency, then throughput at batch."""
    import json

    import torch

    from exdd.offline.features import build_extractor
    from exdd_scoring import Scorer, load_banks

    with open(os.path.join(repo, "exdd_scorer", "1", "features.json")) as f:
        feats = json.load(f)
    torch.set_num_threads(os.cpu_count() or 1)
    model, info = build_extractor(weights, feats["d"], feats["projection_seed"], tuple(feats["input_size"]))
    scorer = Scorer(load_banks(os.path.join(repo, "exdd_scorer", "1", "banks"), expected_features=info))
    mode = scorer.default_mode

    def run(x):
        with torch.no_grad():
            f = model(torch.from_numpy(x)).numpy()
        return scorer.score(f, map_modes=(mode,), modes=(mode,))

    run(images[:1])
    lat = []
    for i in range(len(images)):
        t = time.perf_counter()
        run(images[i : i + 1])
        lat.append(time.perf_counter() - t)
    single = stats(lat, len(images), sum(lat))
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        run(images[i : i + batch])
    single["ips_batched"] = len(images) / (time.perf_counter() - t0)
    return single


def bench_triton(url: str, images: np.ndarray, concurrency: int) -> dict:
    """HTTP: sequential single-image requests (latency), then concurrency parallel senders (throughput)."""
    import tritonclient.http as th

    def one(client, x):
        inp = th.InferInput("IMAGE", list(x.shape), "UINT8")
        inp.set_data_from_numpy(x)
        t = time.perf_counter()
        client.infer("exdd", [inp])
        return time.perf_counter() - t

    with th.InferenceServerClient(url) as c:
        one(c, images[:1])
        lat = [one(c, images[i : i + 1]) for i in range(len(images))]
        single = stats(lat, len(images), sum(lat))

    def sender(k):  # one client per thread (the HTTP client is gevent-based and thread-bound)
        with th.InferenceServerClient(url) as cl:
            return [one(cl, images[i : i + 1]) for i in range(k, len(images), concurrency)]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        lat_c = [t for part in pool.map(sender, range(concurrency)) for t in part]
    wall = time.perf_counter() - t0
    conc = stats(lat_c, len(images), wall)
    single["ips_batched"], single["p50_ms_conc"], single["p95_ms_conc"] = conc["ips"], conc["p50_ms"], conc["p95_ms"]
    return single


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--repo", default=None, help="Use this repository instead of building one.")
    ap.add_argument("--keep", default=None, help="Build into this directory and keep it (reuse with --repo DIR/repo).")
    ap.add_argument("--build-n", type=int, default=40)
    ap.add_argument("--n", type=int, default=16, help="Images timed.")
    ap.add_argument("--input-size", default="632x224")
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8, help="Offline batch size for the throughput row.")
    ap.add_argument("--concurrency", type=int, default=4, help="Parallel single-image requests.")
    ap.add_argument("--features-backend", default="python")
    ap.add_argument("--kind", default="cpu")
    ap.add_argument("--instances", type=int, default=1)
    a = ap.parse_args()
    from exdd.export.onnx_export import load_images

    work = a.keep or tempfile.mkdtemp(prefix="exdd-bench-")
    try:
        build_paths, paths = split(a.dataset, a.build_n, a.n)
        repo = a.repo or prepare(
            build_paths,
            a.dataset,
            a.build_n,
            a.weights,
            a.input_size,
            a.d,
            work,
            a.features_backend,
            a.kind,
            a.instances,
        )
        h, w = (int(v) for v in a.input_size.split("x"))
        images = load_images(paths, (h, w))
        off = bench_offline(repo, images, a.weights, a.batch)
        srv = start_server(repo, timeout=300, exit_on_error=True, exit_timeout=3)
        try:
            tri = bench_triton(srv.http_url, images, a.concurrency)
        finally:
            srv.stop()
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n{len(images)} images {h}x{w}, {os.cpu_count()} CPU cores, d={a.d}, features backend {a.features_backend}\n"
    )
    print("| path | batch-1 images/s | p50 ms | p95 ms | throughput images/s | p50 / p95 ms under load |")
    print("|---|---|---|---|---|---|")
    print(
        f"| offline (torch + NumPy scorer, in-process) | {off['ips']:.2f} | {off['p50_ms']:.0f} | "
        f"{off['p95_ms']:.0f} | "
        f"{off['ips_batched']:.2f} (batch {a.batch}) | - |"
    )
    print(
        f"| Triton HTTP (ensemble exdd) | {tri['ips']:.2f} | {tri['p50_ms']:.0f} | {tri['p95_ms']:.0f} | "
        f"{tri['ips_batched']:.2f} ({a.concurrency} concurrent) | "
        f"{tri['p50_ms_conc']:.0f} / {tri['p95_ms_conc']:.0f} |"
    )


if __name__ == "__main__":
    main()
