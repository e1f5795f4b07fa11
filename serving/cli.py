"""``exdd export repository``: the Triton model repository from an exported extractor and banks."""

from __future__ import annotations

import os

import click

from exdd.cli_common import fail
from exdd_scoring.scores import MODES

from .ann_index import INDEX_KINDS
from .registry import FEATURES_BACKENDS


@click.command("repository")
@click.option("--onnx", "onnx_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--banks",
    "bank_dir",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="The banks of a one-product repository (models exdd, exdd_scorer).",
)
@click.option(
    "--product",
    "product_values",
    multiple=True,
    metavar="NAME=BANKS",
    help="A product and its bank directory; repeat for several products on one server (models exdd_NAME, "
    "exdd_NAME_scorer, one shared exdd_features). NAME: lowercase letters, digits, '_' or '-'.",
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Repository directory to write."
)
@click.option(
    "--features-backend",
    default="onnxruntime",
    show_default=True,
    type=click.Choice(list(FEATURES_BACKENDS)),
    help="; ".join(f"{b.name}: {b.help}" for b in FEATURES_BACKENDS.values()) + ".",
)
@click.option(
    "--engine",
    "engine_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="TensorRT engine for --features-backend tensorrt_plan (built from --onnx when absent).",
)
@click.option("--kind", default="cpu", type=click.Choice(["cpu", "gpu"]), show_default=True)
@click.option("--instances", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(1, 1024))
@click.option(
    "--queue-delay-us",
    default=2000,
    show_default=True,
    type=click.IntRange(0, 10_000_000),
    help="Dynamic batching: longest wait to fill a batch.",
)
@click.option(
    "--mode", default=None, type=click.Choice(list(MODES)), help="Served mode (default: the banks' default_mode)."
)
@click.option(
    "--threshold", default=None, type=float, help="Served threshold (default: the calibrated one; one product only)."
)
@click.option(
    "--min-area",
    default=None,
    type=click.IntRange(min=0),
    help="Served minimum defect area in pixels of the model input (default: the banks' own, 0 = off): an "
    "image is a defect only when its largest region above the pixel threshold is at least this big; "
    "a request's parameter min_area overrides it.",
)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option(
    "--index",
    default="exact",
    type=click.Choice(list(INDEX_KINDS)),
    show_default=True,
    help="CPU scorer search: exact, or hnsw (faiss HNSW, built now, stored in faiss's format and "
    "checksummed in the manifest; the server's Python then needs faiss-cpu). GPU instances "
    "search exactly.",
)
@click.option(
    "--index-min-size",
    default=None,
    type=click.IntRange(1),
    help="hnsw only for banks of at least this many vectors; smaller ones stay exact [default: 8000].",
)
def repository_cmd(
    onnx_path,
    bank_dir,
    product_values,
    out_dir,
    features_backend,
    engine_path,
    kind,
    instances,
    max_batch,
    queue_delay_us,
    mode,
    threshold,
    min_area,
    force,
    index,
    index_min_size,
):
    """Assemble a Triton model repository from ONNX + banks: exdd_features and, per product, its ensemble and scorer."""
    from exdd.export.tensorrt import TensorRTBuildError, TensorRTUnavailable, build_engine
    from exdd_scoring.onnx_metadata import OnnxMetadataError, read_features

    from .configs import Serving
    from .products import ProductError, parse_product
    from .repository import RepositoryError, assemble_products

    if bank_dir and product_values:
        fail("give either --banks (one product) or --product NAME=BANKS (one or more), not both")
    if not bank_dir and not product_values:
        fail("give --banks DIR (one product) or --product NAME=BANKS (repeatable)")
    products = {None: bank_dir}
    if product_values:
        products = {}
        try:
            for v in product_values:
                name, banks = parse_product(v)
                if name in products:
                    raise ProductError(f"--product {name!r} is given twice")
                if not os.path.isdir(banks):
                    raise ProductError(f"--product {v!r}: {banks} is not a directory")
                products[name] = banks
        except ProductError as e:
            fail(str(e))

    try:
        if FEATURES_BACKENDS[features_backend].needs_engine and not (engine_path and os.path.isfile(engine_path)):
            engine_path = engine_path or os.path.splitext(onnx_path)[0] + ".plan"
            click.echo(f"building the TensorRT engine {engine_path} (batch 1..{max_batch}, fp16)", err=True)
            build_engine(onnx_path, engine_path, tuple(read_features(onnx_path)["input_size"]), max_batch)
        res = assemble_products(
            onnx_path,
            products,
            out_dir,
            features_backend,
            Serving(kind, instances, max_batch, queue_delay_us),
            engine_path,
            mode,
            threshold,
            force,
            index,
            index_min_size,
            log=lambda m: click.echo(m, err=True),
            min_area=min_area,
        )
    except (OnnxMetadataError, RepositoryError, TensorRTUnavailable, TensorRTBuildError) as e:
        fail(str(e))
    thr = lambda t: "none" if t is None else f"{t:.6g}"  # noqa: E731
    where = f"repository: {res.path} (features {features_backend}, {instances} x {kind}, max batch {max_batch}, "
    if not product_values:
        click.echo(
            where + f"mode {res.mode}, threshold {thr(res.threshold)}, manifest sha256 "
            f"{res.manifest_sha256[:12]}..., index {index})"
        )
        return
    n = len(res.products)
    click.echo(where + f"index {index}, {n} product{'s' if n != 1 else ''} sharing exdd_features)")
    for p in res.products:
        click.echo(
            f"product {p.models.product}: {p.models.ensemble} -> {p.models.scorer} (banks {p.bank_dir}, "
            f"mode {p.mode}, threshold {thr(p.threshold)}, manifest sha256 {p.manifest_sha256[:12]}...)"
        )
