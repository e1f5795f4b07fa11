"""Decoding image and mask files with bounded memory and clear, per-file errors."""

from __future__ import annotations

import os
from typing import Iterator, Optional, Tuple

import numpy as np
from PIL import Image

# The decode (decompression-bomb limit, first frame, any mode to RGB) and the one model-input resize live in the
# scoring package (exdd_scoring/picture.py), so the client, the bank build, calibration and the server's
# preprocess model call the very same functions; re-exported here for the base layer's users.
from exdd_scoring.picture import FORMATS, MAX_PIXELS, PictureError, open_picture, resize_image, resize_rgb, to_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")

__all__ = [
    "MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "to_rgb",
    "resize_image",
    "resize_rgb",
    "read_image",
    "input_warning",
    "read_model_input",
    "image_size",
    "read_mask",
    "is_image_name",
    "walk_files",
]


class ImageReadError(PictureError):
    """A file that is not a usable image; the message names the file."""


def _open(path: str) -> Image.Image:
    try:
        return open_picture(path, path)
    except PictureError as e:
        raise ImageReadError(str(e)) from None


def read_image(path: str, size_hw: Tuple[int, int] | None = None) -> np.ndarray:
    """The image at path as uint8 (H, W, 3) RGB, resized (resize_image) to size_hw when given."""
    img = to_rgb(_open(path))
    if size_hw is not None:
        img = resize_image(img, size_hw)
    return np.asarray(img, dtype=np.uint8)


# An image is still scored when its shape is far from the model input's, but its row says why the score is
# not to be trusted: a side enlarged more than UPSCALE_WARN times holds interpolation blur, not surface, and an
# aspect ratio off the input's by more than ASPECT_WARN times squashes every defect out of the banks' shapes.
UPSCALE_WARN = 4.0
ASPECT_WARN = 2.0


def input_warning(image_hw: Tuple[int, int], input_hw: Tuple[int, int]) -> Optional[str]:
    """Why the score of an image_hw picture resized to input_hw is not to be trusted, or None."""
    (h, w), (ih, iw) = image_hw, input_hw
    notes = []
    up = max(ih / h, iw / w)
    if up > UPSCALE_WARN:
        notes.append(f"{h}x{w} (HxW) is far below the model input {ih}x{iw} (enlarged {up:.3g}x)")
    off = (w / h) / (iw / ih)
    off = max(off, 1.0 / off)
    if off > ASPECT_WARN:
        notes.append(f"aspect ratio W/H {w / h:.3g} is far from the model input's {iw / ih:.3g} (distorted {off:.3g}x)")
    return "; ".join(notes) + ": score not to be trusted" if notes else None


def read_model_input(path: str, size_hw: Tuple[int, int]) -> Tuple[np.ndarray, Optional[str]]:
    """(the image at path resized to size_hw as read_image does, input_warning of its original size)."""
    img = to_rgb(_open(path))
    warning = input_warning((img.size[1], img.size[0]), size_hw)
    return np.asarray(resize_image(img, size_hw), dtype=np.uint8), warning


def image_size(path: str) -> Tuple[int, int]:
    """(H, W) of an image file without decoding its pixels."""
    try:
        with Image.open(path, formats=FORMATS) as img:
            return img.size[1], img.size[0]
    except Exception as e:  # any failure is reported as this file's error
        raise ImageReadError(f"{path}: not a readable image ({e})") from None


def read_mask(path: str, expect_hw: Tuple[int, int] | None, size_hw: Tuple[int, int] | None = None) -> np.ndarray:
    """A mask file as bool (H, W) (nonzero = defect), resized with nearest; it must match expect_hw."""
    img = _open(path)
    if expect_hw is not None and (img.size[1], img.size[0]) != tuple(expect_hw):
        raise ImageReadError(
            f"{path}: mask is {img.size[1]}x{img.size[0]} (HxW) but its image is {expect_hw[0]}x{expect_hw[1]}"
        )
    arr = np.asarray(img.convert("L"))
    m = Image.fromarray(((arr > 0) * 255).astype(np.uint8))
    if size_hw is not None and m.size != (size_hw[1], size_hw[0]):
        m = m.resize((size_hw[1], size_hw[0]), Image.Resampling.NEAREST)
    return np.asarray(m) > 127


def is_image_name(path: str) -> bool:
    """Whether a file name has an image suffix."""
    return os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def walk_files(root: str, all_files: bool = False) -> Iterator[str]:
    """The one folder walker: files below root in a stable order (folders and files sorted), hidden ones
    skipped; only image-named files unless all_files."""
    for d, dirs, files in os.walk(root):
        dirs.sort()
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        for f in sorted(files):
            if not f.startswith(".") and (all_files or is_image_name(f)):
                yield os.path.join(d, f)
