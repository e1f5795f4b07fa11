"""End-to-end speed side by side in one run: exdd through the local Triton server (fp32, bf16 and int8 extractors)
and anomalib PatchCore in process (scripts/benchmarks/bench_anomalib.py), plus bank build vs fit.

Data: a subset of a KSDD2-layout dataset (--normals normal + --defects defective training images,
--test test images), linked into WORK/data so that both methods see exactly the same files.
  exdd:    `exdd offline build` (timed: the bank build, torch fp32 features + coresets + calibration; and again
           extracting as each reduced precision serves: `--extractor X.onnx --extractor-runtime ...`);
           `exdd export onnx --precision P` (its parity check is logged; a failed check does not stop the run);
           `exdd export repository` (CPU, the precision's features backend); the bundled tritonserver;
           `exdd client score` on the test images at each batch x concurrency point
           (images/s = images / wall time of the command, client start included).
  anomalib: `bench_anomalib.py --skip-exdd` on the same data (its fit on the same normals after exdd's
           hold-out, and its in-process images/s at batch 1 and 8: read + pre-process + forward + map),
           run with --anomalib-python (a venv with anomalib).
The steps run one after the other on the same machine; nothing else of this script runs concurrently.

    EXDD_SERVE_VENV=.venv-serve .venv/bin/python -m scripts.benchmarks.bench_speed --dataset ../shared/data/ksdd1_dev \
        --weights ../shared/weights/wrn50-random0-bncal.safetensors --normals 120 --defects 33 --test 48 \
        --anomalib-python .venv-bench/bin/python --out runs/i11/speed
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from scripts.common import ROOT, exdd, link_subset
from scripts.harness import BenchResult, build_banks, export_onnx, export_repository, params_of, start_server


def subset(dataset: str, dst: str, normals: int, defects: int, test: int, seed: int = 0) -> str:
    """Link a seeded subset of a KSDD2-layout dataset into dst (images with their _GT masks)."""
    from exdd.datasets import load_split

    rng = np.random.default_rng(seed)
    if os.path.isdir(dst):
        shutil.rmtree(dst)
    train = load_split(dataset, "train")
    n = [s for s in train if s.label == 0]
    d = [s for s in train if s.label == 1]
    tst = load_split(dataset, "test")
    tp = [s for s in tst if s.label == 1]
    tn = [s for s in tst if s.label == 0]
    chosen = {
        "train": [n[i] for i in rng.permutation(len(n))[:normals]] + [d[i] for i in rng.permutation(len(d))[:defects]],
        "test": [tp[i] for i in rng.permutation(len(tp))[: test // 2]]
        + [tn[i] for i in rng.permutation(len(tn))[: test - test // 2]],
    }
    for split, samples in chosen.items():
        link_subset(os.path.join(dst, split), [(s.path, s.mask) for s in samples])
    return dst


def serve_and_score(repo: str, test_dir: str, work: str, points, log):
    """Start the bundled server on repo, `client score` the test images at each (batch, concurrency)."""
    n = len([f for f in os.listdir(test_dir) if not f.endswith("_GT.png")])
    server = start_server(repo, repo + ".log", 600, exit_on_error=True, exit_timeout=3)
    out = {}
    try:
        # warm-up pass (first requests pay lazy initialisation)
        exdd(
            "client",
            "score",
            test_dir,
            "--out",
            os.path.join(work, "warm.jsonl"),
            "--url",
            server.grpc_url,
            "--batch-size",
            "1",
            "--concurrency",
            "1",
            "--restart",
            "--exclude",
            "*_GT.png",
            log=log,
        )
        for b, c in points:
            secs = exdd(
                "client",
                "score",
                test_dir,
                "--out",
                os.path.join(work, f"s{b}-{c}.jsonl"),
                "--url",
                server.grpc_url,
                "--batch-size",
                str(b),
                "--concurrency",
                str(c),
                "--restart",
                "--exclude",
                "*_GT.png",
                log=log,
            )
            out[f"batch{b}_conc{c}"] = {"images": n, "seconds": round(secs, 2), "images_per_s": round(n / secs, 3)}
    finally:
        server.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--normals", type=int, default=40)
    ap.add_argument("--defects", type=int, default=10)
    ap.add_argument("--test", type=int, default=24)
    ap.add_argument("--points", default="1x1,8x2", help="batch x concurrency of `client score`")
    ap.add_argument(
        "--anomalib-script",
        default=None,
        help="bench_anomalib.py (default: scripts/benchmarks/bench_anomalib.py here, else /work/wt-anomalib's)",
    )
    ap.add_argument("--anomalib-python", default=None, help="python with anomalib (default: this one)")
    ap.add_argument("--skip-anomalib", action="store_true")
    ap.add_argument("--precisions", default="fp32,bf16,int8", help="extractors served, one after the other")
    ap.add_argument("--out", default="runs/i11/speed")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    logf = open(os.path.join(a.out, "log.txt"), "a")

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)
        logf.write(s + "\n")
        logf.flush()

    w = lambda *p: os.path.join(os.path.abspath(a.out), *p)  # noqa: E731
    points = [tuple(int(v) for v in p.split("x")) for p in a.points.split(",")]
    data = subset(a.dataset, w("data"), a.normals, a.defects, a.test)
    record = BenchResult(
        "bench_speed",
        params_of(a),
        {
            "dataset": a.dataset,
            "subset": {"normals": a.normals, "defects": a.defects, "test": a.test},
            "weights": a.weights,
            "exdd": {},
            "anomalib": None,
        },
    )
    rep = record.metrics

    def save():
        record.save(w("speed.json"), indent=2)

    # exdd: bank build, exports, repositories, serving
    if os.path.isdir(w("banks")):
        shutil.rmtree(w("banks"))
    rep["exdd"]["bank_build_s"] = round(build_banks(data, w("banks"), "--weights", a.weights, log=log), 1)
    save()
    from exdd.serving.registry import EXTRACTOR_PRECISIONS

    precisions = a.precisions.split(",")
    for prec in precisions:
        ep = EXTRACTOR_PRECISIONS[prec]
        onnx = w(f"{prec}.onnx")
        extra = ["--calibration-images", data] if prec == "int8" else []
        # exit 3: a bf16 / int8 parity check failed (printed in the log); the file is still written and served
        rep["exdd"][f"export_{prec}_s"] = round(
            export_onnx(
                w("banks"),
                onnx,
                "--precision",
                ep.export_precision,
                "--parity-images",
                os.path.join(data, "test"),
                *extra,
                log=log,
                ok=(0, 3),
            ),
            1,
        )
        if ep.offline_runtime:  # the bank build again, extracting as this precision serves (offline build --extractor)
            if os.path.isdir(w(f"banks-{prec}")):
                shutil.rmtree(w(f"banks-{prec}"))
            rep["exdd"][f"bank_build_{prec}_s"] = round(
                build_banks(
                    data,
                    w(f"banks-{prec}"),
                    "--weights",
                    a.weights,
                    "--extractor",
                    onnx,
                    "--extractor-runtime",
                    ep.offline_runtime,
                    log=log,
                ),
                1,
            )
        export_repository(
            onnx, w(f"repo-{prec}"), "--features-backend", ep.features_backend, "--force", banks=w("banks"), log=log
        )
        rep["exdd"][f"serve_{prec}"] = serve_and_score(w(f"repo-{prec}"), os.path.join(data, "test"), w(), points, log)
        log(f"exdd {prec}: {rep['exdd'][f'serve_{prec}']}")
        save()

    # anomalib, same data, same weights
    script = a.anomalib_script or next(
        (
            p
            for p in (
                os.path.join(ROOT, "scripts", "benchmarks", "bench_anomalib.py"),
                "/work/wt-anomalib/scripts/benchmarks/bench_anomalib.py",
            )
            if os.path.isfile(p)
        ),
        None,
    )
    if a.skip_anomalib or not script:
        rep["anomalib"] = {"skipped": "--skip-anomalib" if a.skip_anomalib else "no bench_anomalib.py found"}
    else:
        py = a.anomalib_python or sys.executable
        cmd = [
            py,
            script,
            "--dataset",
            data,
            "--weights",
            a.weights,
            "--skip-exdd",
            "--speed-images",
            str(a.test),
            "--speed-reps",
            "1",
            "--resamples",
            "20",
            "--out",
            w("anomalib"),
        ]
        log("$ " + " ".join(cmd))
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        log(f"    exit {p.returncode} in {time.perf_counter() - t:.0f}s")
        try:
            with open(w("anomalib", "bench.json")) as f:
                ab = json.load(f)
            ds = next(iter(ab["datasets"].values()))
            row = next(v for k, v in ds["rows"].items() if k.startswith("anomalib"))
            rep["anomalib"] = {
                "fit_s": round(row["fit_s"], 1),
                "images_per_s": ds["images_per_s"].get("anomalib"),
                "n_normals": ds["n_normals"],
                "speed_images": ds["speed_images"],
                "script": script,
                "versions": ab.get("versions"),
            }
        except (OSError, ValueError, StopIteration, KeyError) as e:
            rep["anomalib"] = {"failed": f"{type(e).__name__}: {e}", "stderr": p.stderr[-1500:], "script": script}
    an = rep["anomalib"] or {}
    if "images_per_s" in an and an["images_per_s"]:
        best_a = max(float(v) for v in an["images_per_s"].values())
        b1_a = float(an["images_per_s"].get("1", an["images_per_s"].get(1, best_a)))
        for prec in precisions:
            s = rep["exdd"][f"serve_{prec}"]
            best = max(v["images_per_s"] for v in s.values())
            b1 = s.get("batch1_conc1", {}).get("images_per_s", best)
            rep["exdd"][f"ratio_{prec}_vs_anomalib"] = {"batch1": round(b1 / b1_a, 2), "best": round(best / best_a, 2)}
        rep["exdd"]["bank_build_vs_fit"] = round(an["fit_s"] / rep["exdd"]["bank_build_s"], 2)
        for prec in precisions:
            if f"bank_build_{prec}_s" in rep["exdd"]:
                rep["exdd"][f"bank_build_{prec}_vs_fit"] = round(an["fit_s"] / rep["exdd"][f"bank_build_{prec}_s"], 2)
    save()
    print(record.dumps(indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
