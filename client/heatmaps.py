"""Heatmap PNGs for scored images: the anomaly map over the image with the defect contour."""

from __future__ import annotations

import hashlib
import os
import re

import numpy as np

from exdd.overlay import overlay, save_png


def heatmap_name(path: str) -> str:
    """A file name inside the heatmap folder for an image path: never a path that could escape it."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(path))[0]).strip("._") or "image"
    digest = hashlib.sha1(os.path.abspath(path).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{stem[:80]}-{digest}.png"


def write_heatmap(folder: str, path: str, image: np.ndarray, amap: np.ndarray, threshold: float | None) -> str:
    """Write the overlay of one image's map into folder; returns the PNG's path.

    Colours run from 0 (blue) to twice the threshold (red), so the decision boundary sits mid-scale.
    """
    hi = 2.0 * threshold if threshold and threshold > 0 else float(np.nanmax(amap)) or 1.0
    out = os.path.join(folder, heatmap_name(path))
    return save_png(out, overlay(image, amap, 0.0, hi, threshold))
