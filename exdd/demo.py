"""``exdd demo``: the whole system on one command, on bundled data or a given dataset.

images -> banks (`exdd offline build`) -> ONNX (`exdd export onnx`) -> Triton repository
(`exdd export repository`) -> local Triton server (`exdd serve`) -> `exdd client score` with
heatmaps -> `exdd offline evaluate` (every mode side by side, and a check that the server's
scores equal the offline ones) -> one HTML report. Each step is the real command a user runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from typing import List, Optional

import click

from exdd import defaults
from exdd.results import EvaluationResults
from exdd.serving.registry import EXTRACTOR_PRECISIONS
from exdd_scoring.scores import MODES

STANDIN = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "..",
    "shared",
    "weights",
    "wrn50-random0-bncal.safetensors",
)


def _exdd(args: List[str], log, ok=(0, 1)) -> subprocess.CompletedProcess:
    """Run one `exdd` step, echoing it; stops the demo with its stderr when it fails."""
    cmd = [sys.executable, "-m", "exdd.cli"] + args
    log("$ exdd " + " ".join(args))
    p = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    notes = [ln for ln in p.stderr.strip().splitlines() if ln.startswith(("note", "warning", "weights"))]
    for line in p.stdout.strip().splitlines() + notes:
        log("    " + line)
    if p.returncode not in ok:
        raise click.ClickException(
            f"step failed (exit {p.returncode}): exdd {' '.join(args)}\n{p.stderr.strip()[-3000:]}"
        )
    return p


def choose_weights(requested: Optional[str], log) -> str:
    """The weights to use: the requested ones, else ImageNet when it can be had, else the stand-in, else random:0."""
    if requested:
        return requested
    from exdd.offline.weights import WeightsError, load_backbone

    try:
        load_backbone("imagenet")
        log("weights: ImageNet (torchvision IMAGENET1K_V1)")
        return "imagenet"
    except WeightsError:
        pass
    if os.path.isfile(STANDIN):
        log(
            f"weights: ImageNet weights unavailable; using the stand-in checkpoint {os.path.normpath(STANDIN)} "
            "(real but modest signal, NOT ImageNet-level)"
        )
        return os.path.normpath(STANDIN)
    log(
        "weights: ImageNet weights unavailable and no checkpoint given: random:0 (RANDOM INIT, "
        "scores are not meaningful; pass --weights PATH for real results)"
    )
    return "random:0"


def export_extractor(banks: str, out: str, weights: str, dataset: str, precision: str, log) -> str:
    """`exdd export onnx` at precision; a bf16 / int8 extractor whose parity check fails is replaced by fp32 (said)."""
    base = [
        "export",
        "onnx",
        "--banks",
        banks,
        "--out",
        out,
        "--weights",
        weights,
        "--parity-images",
        os.path.join(dataset, "test"),
    ]
    if precision != "fp32":
        extra = ["--calibration-images", dataset] if precision == "int8" else []
        p = _exdd(base + ["--precision", EXTRACTOR_PRECISIONS[precision].export_precision] + extra, log, ok=(0, 1, 3))
        if p.returncode == 0:
            return precision
        log(f"note: the {precision} extractor failed its parity check on this data: serving fp32 instead")
    _exdd(base, log)
    return "fp32"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=2) as r:
            return r.status == 200
    except Exception:  # not up yet
        return False


@click.command()
@click.option("--out", "out_dir", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option(
    "--dataset",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="A KSDD2/MVTec-layout dataset (default: bundled generated surfaces).",
)
@click.option("--weights", default=None, help="imagenet | PATH | random:SEED (default: best available, said).")
@click.option("--input-size", default=defaults.INPUT_SIZE, show_default=True)
@click.option("--d", "d", default=defaults.D, show_default=True)
@click.option("--surface", default="brushed", type=click.Choice(["brushed", "commutator", "tile"]), show_default=True)
@click.option(
    "--port-base", default=0, show_default=True, help="HTTP port; gRPC +1, metrics +2 (loopback). 0: any free ports."
)
@click.option("--fresh", is_flag=True, help="Delete --out first.")
@click.option(
    "--precision",
    default="fp32",
    type=click.Choice(list(EXTRACTOR_PRECISIONS)),
    show_default=True,
    help="Extractor on the CPU server: "
    + "; ".join(f"{p.name}: {p.help}" for p in EXTRACTOR_PRECISIONS.values())
    + " (BENCHMARKS.md). bf16 / int8 fall back to fp32 when their parity check fails on the data.",
)
def demo(out_dir, dataset, weights, input_size, d, surface, port_base, fresh, precision):
    """The whole pipeline on bundled data: build, export, serve, score, report."""
    t0 = time.time()
    log = lambda s: click.echo(s, err=True)  # noqa: E731
    if fresh and os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    p = lambda *a: os.path.join(out_dir, *a)  # noqa: E731
    if dataset is None:
        dataset = p("data")
        if not os.path.isdir(os.path.join(dataset, "test")):
            from exdd.offline.surfaces import generate

            log(f"data: generating bundled {surface} surfaces with defects into {dataset}")
            generate(
                dataset,
                n_train_normal=60,
                n_train_defect=16,
                n_test_normal=24,
                n_test_defect=24,
                size_hw=(320, 128),
                surface_kind=surface,
                seed=0,
            )
    weights = choose_weights(weights, log)
    _exdd(
        [
            "offline",
            "build",
            dataset,
            "--out",
            p("banks"),
            "--weights",
            weights,
            "--input-size",
            input_size,
            "--d",
            str(d),
        ],
        log,
    )
    served_precision = export_extractor(p("banks"), p("features.onnx"), weights, dataset, precision, log)
    served = EXTRACTOR_PRECISIONS[served_precision]
    features_backend, offline_runtime = served.features_backend, served.offline_runtime
    _exdd(
        [
            "export",
            "repository",
            "--onnx",
            p("features.onnx"),
            "--banks",
            p("banks"),
            "--out",
            p("repository"),
            "--features-backend",
            features_backend,
            "--force",
        ],
        log,
    )
    if port_base:
        http, grpc, metrics = port_base, port_base + 1, port_base + 2
    else:
        from exdd.serving.serve import free_port

        http, grpc, metrics = free_port(), free_port(), free_port()
    log(f"$ exdd serve {p('repository')} --http-port {http} --grpc-port {grpc} --metrics-port {metrics}")
    server_log = open(p("server.log"), "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exdd.cli",
            "serve",
            p("repository"),
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(metrics),
        ],
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 600
        while not _ready(f"127.0.0.1:{http}"):
            if server.poll() is not None or time.time() > deadline:
                raise click.ClickException(
                    f"the server did not start; see {p('server.log')}:\n" + open(p("server.log")).read()[-3000:]
                )
            time.sleep(1)
        log("    server ready")
        scores = p("scores.jsonl")
        if os.path.exists(scores):
            os.remove(scores)
        _exdd(
            [
                "client",
                "score",
                os.path.join(dataset, "test"),
                "--out",
                scores,
                "--url",
                f"127.0.0.1:{grpc}",
                "--heatmaps",
                p("heatmaps"),
                "--exclude",
                "*_GT.png",
            ],
            log,
        )
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
        log("    server stopped")
    # offline scores with the extractor the server ran (bf16: the ONNX through OpenVINO; int8: through ONNX
    # Runtime), so that the served-vs-offline check compares like with like
    same = ["--extractor", p("features.onnx"), "--extractor-runtime", offline_runtime] if offline_runtime else []
    _exdd(
        ["offline", "evaluate", dataset, "--banks", p("banks"), "--weights", weights, "--out", p("offline.json")]
        + same,
        log,
    )
    results = EvaluationResults.load(p("offline.json"))
    rows = {r["path"]: r for r in (json.loads(x) for x in open(scores) if x.strip())}
    mode = results.default_mode
    diffs = []
    images = []
    for img in results.images:
        r = rows.get(os.path.abspath(img.path)) or {}  # client score writes absolute paths
        served = r.get("score")
        if served is not None:
            diffs.append(abs(served - img.scores[mode]) / max(abs(img.scores[mode]), 1e-6))
        images.append(dataclasses.replace(img, heatmap=r.get("heatmap") or img.heatmap, served_score=served))
    results.images = images
    served_summary = {
        "mode": mode,
        "images": len(diffs),
        "max_relative_difference_to_offline": max(diffs or [float("nan")]),
        "extractor_precision": served_precision,
    }
    results.extra["served"] = served_summary
    results.source = "demo"
    results.save(p("results.json"))
    _exdd(["report", p("results.json"), "--out", p("report.html")], log)
    m = results.metrics
    click.echo(f"report: {os.path.abspath(p('report.html'))}")
    click.echo(f"weights: {results.weights}" + (f"  [{results.weights_note}]" if results.weights_note else ""))

    def num(v) -> float:
        return float("nan") if v is None else float(v)

    for mode_name in MODES:
        v = m.get(mode_name, {})
        click.echo(
            f"{mode_name:<10} image AUROC {num(v.get('image_auroc')):.3f}  "
            f"pixel AUROC {num(v.get('pixel_auroc')):.3f}"
            f"  pixel AUPRO {num(v.get('pixel_aupro')):.3f}"
        )
    click.echo(
        f"served ({mode}, {served_precision} extractor) vs offline: {served_summary['images']} images, "
        f"max relative difference "
        f"{served_summary['max_relative_difference_to_offline']:.2e}"
    )
    click.echo(f"time: {time.time() - t0:.0f}s")
