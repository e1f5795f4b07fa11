"""``exdd client``: score, stream, bench and evaluate through a Triton server."""

from __future__ import annotations

import json
import os
import sys
import time

import click

from exdd.cli_common import fail
from exdd.ray_cluster import ray_options

url_option = click.option(
    "--url",
    "urls",
    multiple=True,
    default=["127.0.0.1:8001"],
    show_default=True,
    help="Server host:port; repeat to spread the load over several servers.",
)
product_option = click.option(
    "--product",
    default=None,
    metavar="NAME",
    help="The product to score with (ensemble exdd_NAME, its scorer's threshold, mode and "
    "features); default: the one-product model exdd.",
)
protocol_option = click.option(
    "--protocol",
    default="grpc",
    type=click.Choice(["grpc", "http"]),
    show_default=True,
    help="gRPC (default) or HTTP. With http give the HTTP port(s) in --url.",
)


@click.group()
def client() -> None:
    """Score, stream, benchmark and evaluate through a Triton server."""


def _models(product):
    """(ensemble, scorer) of --product; fails naming a bad product name."""
    from exdd_scoring.model_names import ProductError, ProductModels

    try:
        pm = ProductModels(product)
    except ProductError as e:
        fail(str(e))
    return pm.ensemble, pm.scorer


def _connect(url, protocol, product):
    """A Connection to the product's ensemble."""
    from .connection import Connection

    model, scorer = _models(product)
    return Connection(url, protocol, model, scorer=scorer)


def _bar(total: int, unit: str = "img"):
    from exdd.progress import bar

    return bar("", total, unit)


@client.command()
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Result file: .jsonl or .csv. An existing one is resumed (done images are skipped).",
)
@url_option
@protocol_option
@product_option
@click.option("--batch-size", default=8, show_default=True)
@click.option("--concurrency", default=2, show_default=True, help="Requests in flight per server.")
@click.option("--threshold", type=float, default=None, help="Override the calibrated threshold.")
@click.option(
    "--min-area",
    type=click.IntRange(min=0),
    default=None,
    help="Override the served minimum defect area (pixels of the largest region above the pixel threshold; 0: off).",
)
@click.option("--heatmaps", type=click.Path(file_okay=False), default=None, help="Write heatmap PNGs into this folder.")
@click.option("--retries", default=5, show_default=True, help="Attempts per batch when a server is unreachable.")
@click.option("--backoff", default=0.5, show_default=True, help="First retry delay in seconds (doubles).")
@click.option("--restart", is_flag=True, help="Start the result file afresh instead of resuming it.")
@click.option(
    "--retry-errors",
    is_flag=True,
    help="On resume, score again the images whose row records a server-side failure (error_kind server: "
    "a crashed backend, a model not ready); their old rows are replaced. Bad files (error_kind input) "
    "are not retried.",
)
@click.option("--exclude", multiple=True, help="File-name pattern to leave out, e.g. '*_GT.png'; repeatable.")
@click.option("--all-files", is_flag=True, help="In folders, take every file, not only image-named ones.")
@click.option(
    "--send",
    default="array",
    type=click.Choice(["array", "bytes"]),
    show_default=True,
    help="array: decode and resize here, send the model-input array; bytes: send the files as they are "
    "(the server decodes and resizes them with the same functions; less bandwidth).",
)
@ray_options
def score(
    paths,
    out_path,
    urls,
    protocol,
    product,
    batch_size,
    concurrency,
    threshold,
    min_area,
    heatmaps,
    retries,
    backoff,
    restart,
    retry_errors,
    exclude,
    all_files,
    send,
    ray_address,
    ray_cpus,
):
    """Score image files, folders or globs; one row per image in --out (paths written absolute).

    One job per --out at a time (OUT.lock). Exit codes: 0 all scored, 1 some files failed (error rows), 2 bad
    usage or --out is being written by another job, 3 the servers went away (rerun to resume).
    """
    from .connection import RequestRejected, ServerUnavailable
    from .output_lock import OutputLocked
    from .results import ResultWriter, row_key
    from .score import JobConfig, run_job
    from .sources import expand

    files = expand(paths, all_files=all_files, exclude=exclude)
    if not files:
        fail("no files match " + " ".join(paths))
    model, scorer = _models(product)
    cfg = JobConfig(
        urls=list(urls),
        protocol=protocol,
        batch_size=batch_size,
        concurrency=concurrency,
        retries=retries,
        backoff_s=backoff,
        threshold=threshold,
        heatmaps=heatmaps,
        model=model,
        scorer=scorer,
        send=send,
        min_area=min_area,
    )
    if ray_address is not None and send == "bytes":
        fail(
            "--send bytes sends the files as they are (the server decodes them): --ray, which decodes them ahead "
            "on Ray, does not apply"
        )
    if ray_address is not None:  # images read and decoded by Ray tasks (client/ray_source.py)
        from exdd.ray_cluster import connect_or_fail

        from .ray_source import RaySource

        cfg.source = RaySource(connect_or_fail(ray_address, ray_cpus))
    try:
        writer = ResultWriter(out_path, resume=not restart, retry_errors=retry_errors)
    except OutputLocked as e:
        fail(str(e))
    for note in writer.notes:
        click.echo(f"warning: {note}", err=True)
    bar = _bar(len(files))
    bar.update(len({row_key(p) for p in files} & writer.done))
    try:
        s = run_job(files, writer, cfg, bar.update)
    except (ServerUnavailable, RequestRejected) as e:
        writer.close()
        bar.close()
        fail(f"{e} (nothing more written; rerun the same command to resume)", 3)
    finally:
        bar.close()
        writer.close()  # the rows synced, the lock released (also on any other exception)
    rate = s.scored / s.seconds if s.seconds > 0 else 0.0
    click.echo(
        f"images: {s.total}, already done: {s.skipped}, scored: {s.scored}, failed: {s.failed}, "
        f"warnings: {s.warned}, {rate:.2f} img/s, results: {out_path}"
    )
    if s.verdicts:
        click.echo("verdicts: " + ", ".join(f"{k} {v}" for k, v in s.verdicts.items()))
    if cfg.source is not None:
        click.echo(
            f"ray: {cfg.source.tasks} read tasks on {cfg.source.cpus} CPUs, {cfg.source.local} batches read locally",
            err=True,
        )
    if len(urls) > 1:
        click.echo("per server: " + ", ".join(f"{k}={v}" for k, v in sorted(s.per_server.items())))
    if s.stopped:
        fail(f"stopped: {s.stopped}; {s.scored} rows written, rerun the same command to resume", 3)
    sys.exit(1 if s.failed else 0)


@client.command()
@click.option("--source", required=True, help="A folder of images, a video file, or a camera index (0, 1, ...).")
@url_option
@protocol_option
@product_option
@click.option("--max-in-flight", default=4, show_default=True)
@click.option("--threshold", type=float, default=None)
@click.option("--max-frames", type=int, default=None, help="Stop after this many frames.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Also append JSONL here.")
def stream(source, urls, protocol, product, max_in_flight, threshold, max_frames, out_path):
    """Stream frames and print one decision line per frame as answers come (Ctrl-C stops cleanly)."""
    from .connection import RequestRejected, ServerUnavailable
    from .stream import stream as run_stream

    try:
        info = _connect(urls[0], protocol, product).info()
    except (ServerUnavailable, RequestRejected) as e:
        fail(str(e), 3)
    out = open(out_path, "a") if out_path else None
    tick = {"n": 0, "t": time.perf_counter()}

    def on_result(r):
        line = json.dumps(r)
        click.echo(line)
        if out:
            out.write(line + "\n")
            out.flush()
        tick["n"] += 1

    k = {"i": 0}

    def factory():
        k["i"] += 1
        return _connect(urls[k["i"] % len(urls)], protocol, product)

    try:
        st = run_stream(source, factory, info, max_in_flight, on_result, threshold, max_frames)
    except ValueError as e:
        fail(str(e))
    if out:
        out.close()
    click.echo(
        f"frames: {st['frames']}, {st['fps']:.2f} frames/s, p50 {st['p50_ms']:.1f} ms, p95 {st['p95_ms']:.1f} ms",
        err=True,
    )


@client.command()
@url_option
@protocol_option
@product_option
@click.option("--batch-sizes", default="1,4,8", show_default=True)
@click.option("--concurrency", "concurrencies", default="1,2,4", show_default=True)
@click.option("--requests", default=20, show_default=True, help="Requests per grid point.")
@click.option(
    "--images",
    "image_dir",
    type=click.Path(exists=True),
    default=None,
    help="Real images to send (default: random noise images).",
)
@click.option("--out", "out_json", type=click.Path(dir_okay=False), default=None)
@click.option(
    "--perf-analyzer-data",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write a perf_analyzer --input-data JSON with one real image (as --send sends it).",
)
@click.option(
    "--send",
    default="array",
    type=click.Choice(["array", "bytes", "raw"]),
    show_default=True,
    help="array: resized here to the model input (IMAGE); bytes: the files as they are (IMAGE_BYTES); "
    "raw: decoded here at their own size (IMAGE), resized by the server. bytes/raw need --images.",
)
def bench(urls, protocol, product, batch_sizes, concurrencies, requests, image_dir, out_json, perf_analyzer_data, send):
    """Throughput, p50/p95/p99 latency and bytes sent per image over a grid of batch size x concurrency."""
    import numpy as np

    from exdd.images import ImageReadError, read_image

    from .bench import bench_point, perf_analyzer_input, table
    from .connection import RequestRejected, ServerUnavailable
    from .sources import expand

    try:
        info = _connect(urls[0], protocol, product).info()
    except (ServerUnavailable, RequestRejected) as e:
        fail(str(e), 3)
    if send != "array" and not image_dir:
        fail(f"--send {send} needs --images (real files to send)")
    files = expand([image_dir])[:16] if image_dir else []
    if image_dir and not files:
        fail(f"no images in {image_dir}")
    try:
        if send == "bytes":
            imgs = [open(p, "rb").read() for p in files]
        elif send == "raw":  # one request holds one shape: the files of the first file's size
            raw = [read_image(p) for p in files]
            imgs = [a for a in raw if a.shape == raw[0].shape]
        elif image_dir:
            imgs = np.stack([read_image(p, info.input_hw) for p in files])
        else:
            imgs = np.random.default_rng(0).integers(0, 256, (4,) + tuple(info.input_hw) + (3,), dtype=np.uint8)
    except (ImageReadError, OSError) as e:
        fail(str(e))
    if perf_analyzer_data:
        perf_analyzer_input(perf_analyzer_data, imgs[0])
    k = {"i": 0}

    def factory():
        k["i"] += 1
        return _connect(urls[k["i"] % len(urls)], protocol, product)

    rows = []
    for b in (int(v) for v in batch_sizes.split(",")):
        if b > info.max_batch:
            click.echo(f"note: batch {b} > the model's max batch {info.max_batch}: skipped", err=True)
            continue
        for c in (int(v) for v in concurrencies.split(",")):
            rows.append(bench_point(factory, info, b, c, requests, imgs))
    click.echo(table(rows))
    if out_json:
        with open(out_json, "w") as f:
            json.dump(
                {"urls": list(urls), "protocol": protocol, "send": send, "input_hw": list(info.input_hw), "rows": rows},
                f,
                indent=1,
            )


@client.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@url_option
@protocol_option
@product_option
@click.option("--split", default="test", show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--concurrency", default=2, show_default=True)
@click.option("--no-pixel", is_flag=True, help="Image metrics only.")
@click.option("--out", "out_json", type=click.Path(dir_okay=False), default=None)
@click.option(
    "--compare",
    "offline_json",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="An `exdd offline evaluate --out` JSON to compare the metrics with.",
)
def evaluate(dataset, urls, protocol, product, split, batch_size, concurrency, no_pixel, out_json, offline_json):
    """Metrics (image/pixel AUROC, ...) of the served model on a labelled dataset."""
    from exdd.datasets import DatasetError, load_split

    from .connection import RequestRejected, ServerUnavailable
    from .evaluate import evaluate as run_eval

    try:
        samples = load_split(dataset, split)
        info = _connect(urls[0], protocol, product).info()
    except (DatasetError, ServerUnavailable, RequestRejected) as e:
        fail(str(e), 2 if isinstance(e, DatasetError) else 3)
    k = {"i": 0}

    def factory():
        k["i"] += 1
        return _connect(urls[k["i"] % len(urls)], protocol, product)

    bar = _bar(len(samples))
    try:
        res = run_eval(samples, factory, info, batch_size, concurrency, with_pixel=not no_pixel, progress=bar.update)
    except ServerUnavailable as e:
        fail(str(e), 3)
    finally:
        bar.close()
    res.dataset, res.split, res.source = os.path.abspath(dataset), split, "server " + ",".join(urls)
    m = res.metrics[info.mode]
    keys = ["image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_aupro"]
    click.echo(f"mode {info.mode}: " + ", ".join(f"{k} {m.get(k, float('nan')):.4f}" for k in keys))
    if offline_json:
        from exdd.results import EvaluationResults, ResultsError

        try:
            off = EvaluationResults.load(offline_json).metrics.get(info.mode, {})
        except ResultsError as e:
            fail(str(e))
        num = lambda v: float("nan") if v is None else float(v)  # noqa: E731
        diffs = {k: num(m.get(k)) - num(off.get(k)) for k in keys}
        click.echo("minus offline: " + ", ".join(f"{k} {v:+.4f}" for k, v in diffs.items()))
        res.extra["offline_difference"] = diffs
    if out_json:
        res.save(out_json)
    for row in res.errors:
        click.echo(f"error: {row.error}", err=True)
