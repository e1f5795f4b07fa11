"""The one decode and model-input resize of every path: files and camera frames on the client, bank building and
calibration offline, and encoded bytes or raw arrays of any size in the server's ``exdd_preprocess`` model.

numpy + Pillow (the one module of the scoring package that needs Pillow; nothing imports it from
``exdd_scoring/__init__``, so the scorer and features models never load it). Errors name what was read
(a file's path, a request's input) through ``what``.
"""

from __future__ import annotations

import io
import warnings
from typing import BinaryIO, Tuple, Union

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

# A decoded image may hold at most this many pixels (a 30000x30000 PNG header is refused
# before any pixel is decoded). 64 Mpx is ~200 MB as RGB.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False

# The raster formats decoded on every path (Pillow's format names), and no others: a PostScript file never reaches
# Ghostscript, nor any other format's plugin its parser (issue 26). The same list as exdd.images.IMAGE_SUFFIXES.
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")

# Pictures wider than 8 bits are scaled by their mode, never by their content (issue 26: scaled by 65535 only when
# a pixel exceeded 255, a 12-bit camera's frames flipped between two scales frame to frame). A 16-bit mode is
# 0..65535 -> 0..255 always (v / 257, rounded); mode I (32-bit integer) is read as 16-bit too (above 65535 clips);
# float F is taken as 0..255 (clipped, NaN as 0).
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class PictureError(ValueError):
    """Something that is not a usable picture; the message names it (a file, a request's input)."""


def open_picture(source: Union[str, BinaryIO], what: str) -> Image.Image:
    """The first frame of the picture at source (a path or a binary file object), loaded, within MAX_PIXELS."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source, formats=FORMATS)
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise PictureError(f"{what}: {w}x{h} pixels exceeds the limit of {MAX_PIXELS} (refused)")
            if w < 1 or h < 1:
                raise PictureError(f"{what}: empty image ({w}x{h})")
            img.seek(0)  # first frame of an animation
            img.load()
            return img
    except PictureError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PictureError(f"{what}: refused as a decompression bomb ({e})") from None
    except FileNotFoundError:
        raise PictureError(f"{what}: no such file") from None
    except IsADirectoryError:
        raise PictureError(f"{what}: is a directory") from None
    except UnidentifiedImageError:
        raise PictureError(f"{what}: {_refused(source)}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise PictureError(f"{what}: corrupt or truncated image ({e})") from None


def _refused(source: Union[str, BinaryIO]) -> str:
    """Why Image.open(formats=FORMATS) refused source: the format it is (by Pillow's own header checks, which
    parse nothing), or that it is no picture at all."""
    accepted = ", ".join(FORMATS)
    try:
        if isinstance(source, str):
            with open(source, "rb") as f:
                prefix = f.read(16)
        else:
            source.seek(0)
            prefix = source.read(16)
        Image.init()
        for fmt in Image.ID:
            accept = Image.OPEN[fmt][1]
            if fmt not in FORMATS and accept is not None and accept(prefix):
                return f"format {fmt} (by its header) is not accepted (accepted formats: {accepted})"
    except Exception:  # only the message's detail
        pass
    return f"not a recognised image file (accepted formats: {accepted})"


def to_8bit(img: Image.Image) -> Image.Image:
    """A picture of a mode wider than 8 bits as mode L, scaled by its mode alone (SIXTEEN_BIT_MODES, F); others
    unchanged."""
    if img.mode in SIXTEEN_BIT_MODES:
        arr = np.asarray(img).astype(np.int64).clip(0, 65535)
        return Image.fromarray(((arr + 128) // 257).astype(np.uint8), mode="L")
    if img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        return Image.fromarray(arr.clip(0, 255).astype(np.uint8), mode="L")
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, I;16, RGBA, P, CMYK, ...) as 8-bit RGB (16-bit by its mode: to_8bit)."""
    img = to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")


def resize_image(img: Image.Image, size_hw: Tuple[int, int]) -> Image.Image:
    """The one model-input resize of every path (files, video/camera frames, bank building, calibration, the
    server's preprocess model): PIL bilinear, which antialiases when shrinking (its filter widens with the scale)."""
    if img.size == (size_hw[1], size_hw[0]):
        return img
    return img.resize((int(size_hw[1]), int(size_hw[0])), Image.Resampling.BILINEAR)


def check_rgb(arr: np.ndarray, what: str) -> np.ndarray:
    """arr as a contiguous uint8 (H, W, 3) array of at least 1x1 and at most MAX_PIXELS pixels."""
    if arr.dtype != np.uint8:
        raise PictureError(f"{what}: expected uint8 pixels, got {arr.dtype}")
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise PictureError(f"{what}: expected an RGB array (H, W, 3), got shape {tuple(arr.shape)}")
    h, w = arr.shape[:2]
    if h < 1 or w < 1:
        raise PictureError(f"{what}: empty image ({h}x{w} HxW)")
    if h * w > MAX_PIXELS:
        raise PictureError(f"{what}: {w}x{h} pixels exceeds the limit of {MAX_PIXELS} (refused)")
    return np.ascontiguousarray(arr)


def resize_rgb(rgb: np.ndarray, size_hw: Tuple[int, int], what: str = "image") -> np.ndarray:
    """A uint8 (H, W, 3) RGB array resized to size_hw exactly as a decoded file is (unchanged when already that
    size)."""
    arr = check_rgb(np.asarray(rgb), what)
    if arr.shape[:2] == tuple(size_hw):
        return arr
    return np.asarray(resize_image(Image.fromarray(arr, mode="RGB"), size_hw), dtype=np.uint8)


def decode_rgb(data: bytes, what: str) -> np.ndarray:
    """Encoded picture bytes (PNG, JPEG, BMP, TIFF, ...) as a uint8 (H, W, 3) RGB array at their own size."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PictureError(f"{what}: expected encoded image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise PictureError(f"{what}: empty (0 bytes)")
    return np.asarray(to_rgb(open_picture(io.BytesIO(bytes(data)), what)), dtype=np.uint8)
