"""Small helpers shared by the click commands."""
from __future__ import annotations

import sys
from typing import NoReturn, Tuple

import click

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


input_size_option = click.option("--input-size", default=defaults.INPUT_SIZE, show_default=True,
                                 help="Model input size HxW (images are resized to it).")
