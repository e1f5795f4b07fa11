"""Small helpers shared by the click commands."""

from __future__ import annotations

import sys
from typing import NoReturn, Tuple

import click

from exdd_scoring.runtimes import OPENVINO_PRECISIONS

from . import defaults


def fail(message: str, code: int = 2) -> NoReturn:
    """Print 'error: message' to stderr and exit with code (no traceback)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def parse_hw(text: str) -> Tuple[int, int]:
    """'632x224' -> (632, 224) (height x width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h < 32 or w < 32:
            raise ValueError
        return h, w
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected HxW, e.g. 632x224, each at least 32") from None


input_size_option = click.option(
    "--input-size",
    default=defaults.INPUT_SIZE,
    show_default=True,
    help="Model input size HxW (images are resized to it).",
)


#: how an --extractor ONNX runs offline: a runtime of exdd_scoring.runtimes, with OpenVINO's inference precision
EXTRACTOR_RUNTIMES = ("onnxruntime",) + tuple(f"openvino-{p}" for p in OPENVINO_PRECISIONS)
extractor_runtime_option = click.option(
    "--extractor-runtime",
    default="onnxruntime",
    show_default=True,
    type=click.Choice(EXTRACTOR_RUNTIMES),
    help="How --extractor runs: ONNX Runtime (the file's precision), or OpenVINO in bf16 (the CPU repository's "
    "default extractor) or f32.",
)
