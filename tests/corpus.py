"""A generated corpus of awkward image files (nothing binary is committed)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Dict

import numpy as np
from PIL import Image


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h pixels, with one tiny IDAT (a decompression-bomb header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def make(root: Path) -> Dict[str, str]:
    """Write the corpus under root; returns {relative path: 'ok' | 'error'} (what a reader must answer)."""
    rng = np.random.default_rng(0)
    gray = Image.fromarray(rng.integers(0, 255, (60, 40), dtype=np.uint8))
    rgb = Image.fromarray(rng.integers(0, 255, (60, 40, 3), dtype=np.uint8))
    png = _encode(gray, "PNG")
    jpg = _encode(rgb, "JPEG", quality=90)
    files = {
        "empty.png": (b"", "error"),
        "truncated.png": (png[: len(png) // 2], "error"),
        "truncated.jpg": (jpg[: len(jpg) // 3], "error"),
        "text.png": (b"hello, I am not an image\n" * 10, "error"),
        "bomb.png": (_png_header_only(30000, 30000), "error"),
        "one_pixel.png": (_encode(Image.new("L", (1, 1), 128), "PNG"), "ok"),
        "wide_strip.png": (_encode(Image.new("L", (4000, 2), 90), "PNG"), "ok"),
        "tall_strip.png": (_encode(Image.new("L", (2, 3000), 90), "PNG"), "ok"),
        "sixteen_bit.png": (
            _encode(Image.fromarray((rng.integers(0, 65535, (50, 30))).astype(np.uint16)), "PNG"),
            "ok",
        ),
        "rgba.png": (_encode(rgb.convert("RGBA"), "PNG"), "ok"),
        "palette.png": (_encode(rgb.convert("P"), "PNG"), "ok"),
        "cmyk.jpg": (_encode(rgb.convert("CMYK"), "JPEG"), "ok"),
        "animated.gif": (_encode(rgb.convert("P"), "GIF", save_all=True, append_images=[gray.convert("P")] * 2), "ok"),
        "image.tiff": (_encode(rgb, "TIFF"), "ok"),
        "image.bmp": (_encode(rgb, "BMP"), "ok"),
        "image.webp": (_encode(rgb, "WEBP"), "ok"),
        "twelve_bit.tif": (_encode(Image.fromarray((rng.integers(0, 4096, (50, 30))).astype(np.uint16)), "TIFF"), "ok"),
        "postscript.png": (_encode(rgb, "EPS"), "error"),  # a real EPS named .png: never reaches Ghostscript
        "pixmap.tif": (_encode(rgb, "PPM"), "error"),  # a format Pillow knows but exdd does not accept
        "name with spaces.png": (png, "ok"),
        "ñame-ünïcode-画像.png": (png, "ok"),
        "nested/deeper/inner.png": (png, "ok"),
    }
    flipped = bytearray(png)
    for i in range(60, len(flipped), 7):
        flipped[i] ^= 0xFF
    files["flipped_bytes.png"] = (bytes(flipped), "either")
    out = {}
    for name, (data, expect) in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        out[name] = expect
    return out
