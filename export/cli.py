"""``exdd export``: onnx, tensorrt (the repository command is serving/cli.py's, added to this group by exdd/cli.py)."""

from __future__ import annotations

import os
import time

import click

from exdd import defaults
from exdd.cli_common import fail, input_size_option, parse_hw


@click.group()
def export() -> None:
    """Export the feature extractor (ONNX / TensorRT) and assemble a Triton model repository."""


def _features_source(banks, weights, d, projection_seed, input_size):
    """(weights, d, seed, input_hw, projection, kind) from a bank directory when --banks is given (a fitted
    projection: the matrix of its projection.npy, checked against the manifest's hashes), else from the options
    (the random projection: matrix None)."""
    from exdd_scoring.spec import RANDOM_PROJECTION

    if not banks:
        return weights or "imagenet", d, projection_seed, parse_hw(input_size), None, RANDOM_PROJECTION
    from exdd_scoring import BankError, load_projection, read_manifest

    try:
        m = read_manifest(banks)
        proj = load_projection(banks, m)
    except BankError as e:
        fail(str(e))
    f = m.features
    return weights or f.weights_source or f.weights, f.d, f.projection_seed, f.input_size, proj, f.projection


@export.command("onnx")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="ONNX file to write.")
@click.option(
    "--banks",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Take weights, d, projection and input size from this bank directory (a fitted projection from "
    "its projection.npy, baked into the ONNX as the random one is).",
)
@click.option("--weights", default=None, help="imagenet | PATH | random:SEED (default: the banks' or imagenet).")
@click.option("--d", "d", default=defaults.D, show_default=True, help="Projection dimension (ignored with --banks).")
@click.option("--projection-seed", default=0, show_default=True, help="(ignored with --banks)")
@input_size_option
@click.option(
    "--precision",
    default="fp32",
    type=click.Choice(["fp32", "fp16", "bf16", "int8"]),
    show_default=True,
    help="bf16: the fp32 file, checked as OpenVINO runs it at bf16 (what --features-backend python-openvino "
    "serves). int8: ONNX Runtime static quantization (QDQ, per-channel Conv weights) calibrated on "
    "--calibration-images. Both are faster on CPUs but missed score parity on a dev set "
    "(BENCHMARKS.md).",
)
@click.option(
    "--parity-images",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Folder or dataset whose first images the parity check uses (default: generated surfaces).",
)
@click.option(
    "--parity-count",
    default=None,
    type=click.IntRange(1, 256),
    help="Parity images [default: 4; 16 for int8 and bf16, whose check ranks image scores].",
)
@click.option(
    "--calibration-images",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="int8: dataset (its normal training images) or folder calibrating the activation ranges.",
)
@click.option("--calibration-count", default=32, show_default=True, type=click.IntRange(1, 1024))
def onnx_cmd(
    out_path,
    banks,
    weights,
    d,
    projection_seed,
    input_size,
    precision,
    parity_images,
    parity_count,
    calibration_images,
    calibration_count,
):
    """Export the feature extractor to ONNX and check it against torch (fails above the tolerance).

    int8 and bf16 are checked against torch fp32 on the parity images: patch cosine similarity, and with
    --banks the image scores' rank correlation (>= 0.99 to pass)."""
    import torch

    from exdd.offline.features import build_extractor
    from exdd.offline.weights import WeightsError, is_random

    from .onnx_export import ExportError, export_onnx, parity
    from .onnx_export import parity_images as get_images

    weights, d, seed, hw, proj, kind = _features_source(banks, weights, d, projection_seed, input_size)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    try:
        model, info = build_extractor(weights, d, seed, hw, proj, kind)
    except WeightsError as e:
        fail(str(e))
    if banks:
        from exdd_scoring import BankError, read_manifest_features
        from exdd_scoring.bank import check_features

        try:
            check_features(read_manifest_features(banks), info, banks)
        except BankError as e:
            fail(str(e))
    if is_random(info["weights"]):
        click.echo(f"note: weights {info['weights']} -- RANDOM-INIT backbone", err=True)
    if precision == "int8":
        if not calibration_images:
            fail("--precision int8 needs --calibration-images DATASET_OR_FOLDER (normal training images)")
        return _export_int8(
            model, info, out_path, banks, hw, parity_images, parity_count or 16, calibration_images, calibration_count
        )
    t0 = time.time()
    file_precision = "fp32" if precision == "bf16" else precision
    try:
        images, where = get_images(parity_images, parity_count or (16 if precision == "bf16" else 4), hw)
        export_onnx(model, info, out_path, file_precision)
        result = parity(out_path, model, images, file_precision)
    except ExportError as e:
        fail(str(e))
    click.echo(
        f"onnx: {out_path} ({file_precision}, {os.path.getsize(out_path) / 1e6:.1f} MB, {time.time() - t0:.1f}s)"
    )
    click.echo(f"{result.describe()} [{where}]")
    if not result.ok:
        fail(
            f"{out_path}: ONNX Runtime differs from torch beyond the tolerance "
            f"({result.rel:.2e} > {result.tolerance:.0e})",
            3,
        )
    if precision == "bf16":
        _check_bf16(out_path, model, images, where, banks)


def _banks_or_none(banks):
    """The banks of --banks for a parity check's image-score ranking, or None without --banks."""
    if not banks:
        return None
    from exdd_scoring import load_banks

    return load_banks(banks)


def _check_bf16(out_path, model, images, where, banks):
    """The exported fp32 file through OpenVINO at bf16 against torch fp32 (and image scores with banks)."""
    from exdd_scoring.runtimes import open_runtime

    from .quantize import reduced_parity

    try:
        runner = open_runtime("openvino", out_path, "bf16")
    except ImportError as e:
        fail(f"--precision bf16 checks the file through OpenVINO, which is not installed ({e}): pip install openvino")
    result = reduced_parity(runner, "bf16", model, images, _banks_or_none(banks))
    click.echo(f"{result.describe()} [{where}; OpenVINO{', ' + runner.note if runner.note else ''}]")
    if not result.ok:
        fail(
            f"{out_path}: OpenVINO bf16 differs from fp32 beyond the tolerance: serve it with "
            "--features-backend python (ONNX Runtime fp32)",
            3,
        )


def _export_int8(model, info, out_path, banks, hw, parity_images, parity_count, calibration_images, calibration_count):
    """fp32 export -> static int8 quantization -> parity against torch fp32 (and image scores with banks)."""
    import tempfile

    from .onnx_export import ExportError, export_onnx
    from .onnx_export import parity_images as get_images
    from .quantize import calibration_images as get_calibration
    from .quantize import quant_parity, quantize_int8

    t0 = time.time()
    try:
        images, where = get_images(parity_images, parity_count, hw)
        calib, calib_where = get_calibration(calibration_images, calibration_count, hw)
        with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(out_path)) or ".") as tmp:
            fp32 = export_onnx(model, info, os.path.join(tmp, "fp32.onnx"), "fp32")
            click.echo(f"calibrating int8 on {calib_where}", err=True)
            quantize_int8(fp32, out_path, calib)
        result = quant_parity(out_path, model, images, _banks_or_none(banks))
    except ExportError as e:
        fail(str(e))
    click.echo(f"onnx: {out_path} (int8, {os.path.getsize(out_path) / 1e6:.1f} MB, {time.time() - t0:.1f}s)")
    click.echo(f"{result.describe()} [{where}]")
    if not result.ok:
        fail(f"{out_path}: the int8 extractor differs from fp32 beyond the tolerance", 3)


@export.command("tensorrt")
@click.argument("onnx_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Engine (.plan) to write.")
@click.option(
    "--max-batch", default=8, show_default=True, type=click.IntRange(1, 1024), help="Optimisation profile: batch 1..N."
)
@click.option("--fp32", "fp32", is_flag=True, help="Build without FP16 kernels.")
def tensorrt_cmd(onnx_path, out_path, max_batch, fp32):
    """Build a TensorRT engine (fp16, batch 1..N) from an exported ONNX."""
    from exdd_scoring.onnx_metadata import OnnxMetadataError, read_features

    from .tensorrt import NO_TENSORRT, TensorRTBuildError, TensorRTUnavailable, build_engine, which_builder

    if which_builder() is None:
        fail(NO_TENSORRT)
    try:
        feats = read_features(onnx_path)
        t0 = time.time()
        build_engine(onnx_path, out_path, tuple(feats["input_size"]), max_batch, fp16=not fp32)
    except (OnnxMetadataError, TensorRTUnavailable, TensorRTBuildError) as e:
        fail(str(e))
    click.echo(
        f"engine: {out_path} ({os.path.getsize(out_path) / 1e6:.1f} MB, {time.time() - t0:.1f}s, "
        f"batch 1..{max_batch}, {'fp32' if fp32 else 'fp16'})"
    )
