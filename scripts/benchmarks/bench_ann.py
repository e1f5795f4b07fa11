"""Exact vs HNSW (faiss) nearest-neighbour search for the CPU scorer at 16k / 46k / 100k banks, d = 256.

Real patch features: the fp32 extractor on --bank-images normal training images gives the bank source
(~2.2k patches per image at 632x224) and on --query-images test images the queries. A bank of N is N
source patches drawn without replacement; when N exceeds the source, the source is tiled and each
copy after the first gets Gaussian jitter (std --jitter x the per-dimension std) so no two rows are equal.
The within-bank neighbours of the reweighting (k = 3) come from one HNSW top-3 search and are shared
by both runs, so score differences come from the query search alone.

Measured per bank size: recall of the exact nearest distance (HNSW distance within 1e-4 relative of
the exact one), image-score rank correlation (patchcore score, negative bank) vs exact, ms/image of
the search alone (exact matmul vs HNSW) and HNSW build time and file size.

    nice -n 10 .venv/bin/python -m scripts.benchmarks.bench_ann --dataset ../shared/data/magnetic_tile \
        --weights ../shared/weights/wrn50-random0-bncal.safetensors --out runs/i11/ann.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from scripts.harness import BenchResult, latency_stats, params_of


def features(onnx_path, samples, threads):
    from exdd.offline.extract import batches
    from exdd_scoring.runtimes import open_runtime

    runner = open_runtime("onnxruntime", onnx_path, "", threads)
    out, errors = [], []
    for _, imgs, _ in batches(samples, (632, 224), 4, False, errors):
        out.append(runner.run(imgs))
    return np.concatenate(out)


def make_bank(source, n, jitter, rng):
    """n rows from the source patches; tiled with jitter beyond the source size."""
    if n <= len(source):
        return np.ascontiguousarray(source[rng.choice(len(source), n, replace=False)])
    reps = int(np.ceil(n / len(source)))
    std = source.std(axis=0, keepdims=True)
    parts = [source] + [
        source + rng.normal(0, 1, source.shape).astype(np.float32) * (jitter * std) for _ in range(reps - 1)
    ]
    allp = np.concatenate(parts)
    return np.ascontiguousarray(allp[rng.choice(len(allp), n, replace=False)].astype(np.float32))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--onnx", default=None, help="fp32 extractor (exported when absent)")
    ap.add_argument("--sizes", default="16000,46000,100000")
    ap.add_argument("--bank-images", type=int, default=24)
    ap.add_argument("--query-images", type=int, default=16)
    ap.add_argument("--exact-images", type=int, default=4, help="images timed with the exact search (it is slow)")
    ap.add_argument("--ef-search", default="32,64,128")
    ap.add_argument("--m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=128)
    ap.add_argument("--jitter", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/i11/ann.json")
    args = ap.parse_args()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    import faiss

    from exdd.datasets import load_split
    from exdd.metrics import spearman
    from exdd_scoring import Bank, BankPair, Scorer
    from exdd_scoring.ann import ExactSearcher, HnswSearcher

    faiss.omp_set_num_threads(args.threads)
    onnx_path = args.onnx
    if not onnx_path:
        import torch

        from exdd.export.onnx_export import export_onnx
        from exdd.offline.features import build_extractor

        torch.set_num_threads(args.threads)
        model, info = build_extractor(args.weights, 256, 0, (632, 224))
        onnx_path = export_onnx(model, info, os.path.join(tempfile.mkdtemp(), "fp32.onnx"), "fp32")
    train = [s for s in load_split(args.dataset, "train") if s.label == 0]
    test = load_split(args.dataset, "test")
    step = max(1, len(train) // args.bank_images)
    t0 = time.time()
    src = features(onnx_path, train[::step][: args.bank_images], args.threads).reshape(-1, 256).astype(np.float32)
    qstep = max(1, len(test) // args.query_images)
    queries = features(onnx_path, test[::qstep][: args.query_images], args.threads)
    log(f"features: {len(src)} source patches, {queries.shape[0]} query images ({time.time() - t0:.0f}s)")
    nq, h, w, d = queries.shape
    flat = queries.reshape(nq, h * w, d)
    rng = np.random.default_rng(0)
    record = BenchResult(
        "bench_ann",
        params_of(args),
        {
            "note": "other benchmarks running at the same time",
            "threads": args.threads,
            "dataset": args.dataset,
            "source_patches": int(len(src)),
            "query_images": int(nq),
            "patches_per_image": int(h * w),
            "m": args.m,
            "ef_construction": args.ef_construction,
            "jitter": args.jitter,
            "faiss": faiss.__version__,
            "sizes": [],
        },
    )
    report = record.metrics
    for n in (int(v) for v in args.sizes.split(",")):
        bank = make_bank(src, n, args.jitter, rng)
        t = time.perf_counter()
        hn = HnswSearcher.build(bank, args.m, args.ef_construction, 64)
        build_s = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as tmp:
            hn.save(os.path.join(tmp, "i.hnsw"))
            size_mb = os.path.getsize(os.path.join(tmp, "i.hnsw")) / 1e6
        hn.index.hnsw.efSearch = 64
        _, nb = hn.index.search(bank, 3)
        nb = np.where(nb[:, 1:] >= 0, nb[:, 1:], 0).astype(np.int32)  # self first (approximately)
        from exdd_scoring.onnx_metadata import read_features

        manifest = {"features": read_features(onnx_path), "k": 3, "default_mode": "exdd"}  # the extractor's (h, w, d)
        pair = BankPair(Bank(bank, nb), None, manifest)
        ex = ExactSearcher(bank)
        # exact: reference distances on every query image; timing on the first exact_images
        ref_d, ref_s, times = [], [], []
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            sc_exact = Scorer(pair, searchers={"negative": ex})
            for i in range(nq):
                t = time.perf_counter()
                dd, _ = ex.nearest(flat[i])
                if i < args.exact_images:
                    times.append(time.perf_counter() - t)
                ref_d.append(dd)
                ref_s.append(float(sc_exact.score(queries[i : i + 1], map_modes=()).scores["patchcore"][0]))
            ent = {
                "bank": n,
                "hnsw_build_s": round(build_s, 1),
                "hnsw_file_mb": round(size_mb, 1),
                "exact_ms_per_image": round(latency_stats(times)["p50_ms"], 1),
                "hnsw": [],
            }
            for ef in (int(v) for v in args.ef_search.split(",")):
                hn.index.hnsw.efSearch = ef
                sc_h = Scorer(pair, searchers={"negative": hn})
                rec, s_h, ht = [], [], []
                for i in range(nq):
                    t = time.perf_counter()
                    dd, _ = hn.nearest(flat[i])
                    ht.append(time.perf_counter() - t)
                    rec.append(np.abs(dd - ref_d[i]) <= 1e-4 * np.maximum(ref_d[i], 1e-6) + 1e-5)
                    s_h.append(float(sc_h.score(queries[i : i + 1], map_modes=()).scores["patchcore"][0]))
                rec = np.concatenate(rec)
                hd = np.concatenate([hn.nearest(flat[i])[0] for i in range(min(nq, 4))])
                rd = np.concatenate(ref_d[: min(nq, 4)])
                ent["hnsw"].append(
                    {
                        "ef_search": ef,
                        "ms_per_image": round(latency_stats(ht)["p50_ms"], 1),
                        "recall_exact_nearest": round(float(rec.mean()), 4),
                        "mean_distance_excess": float(np.mean(hd / np.maximum(rd, 1e-6) - 1)),
                        "image_score_rank_correlation": round(spearman(np.array(s_h), np.array(ref_s)), 4),
                        "image_score_max_rel_diff": float(
                            np.max(np.abs(np.array(s_h) - ref_s) / np.maximum(np.abs(ref_s), 1e-9))
                        ),
                    }
                )
        log(json.dumps(ent))
        report["sizes"].append(ent)
        record.save(args.out, indent=2)
    print(record.dumps(indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
