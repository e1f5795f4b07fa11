"""Heatmap overlays: an anomaly map in a turbo colormap blended over its image, with contours.

Dependency-light on purpose (numpy and pillow only): the report and the client's
``--heatmaps`` option both use it, neither needs matplotlib or OpenCV at run time.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np
from PIL import Image

# Contour colours (RGB): the predicted defect (map >= threshold) and the ground truth.
PRED_COLOR: Tuple[int, int, int] = (255, 255, 255)
GT_COLOR: Tuple[int, int, int] = (255, 0, 255)

# Google's Turbo colormap (Mikhailov 2019) at 17 evenly spaced stops, interpolated linearly
# (within 7/255 of the full 256-entry table everywhere).
_TURBO_STOPS = np.array(
    [
        [48, 18, 59],
        [64, 64, 162],
        [70, 107, 227],
        [66, 148, 255],
        [40, 188, 235],
        [24, 221, 194],
        [50, 242, 152],
        [109, 254, 98],
        [164, 252, 60],
        [205, 236, 52],
        [238, 207, 58],
        [253, 172, 52],
        [251, 126, 33],
        [235, 80, 14],
        [208, 47, 5],
        [169, 22, 1],
        [122, 4, 3],
    ],
    dtype=np.float64,
)


def turbo_lut(n: int = 256) -> np.ndarray:
    """A (n, 3) uint8 lookup table of the Turbo colormap, dark blue (0) to dark red (n-1)."""
    xs = np.linspace(0.0, 1.0, n)
    stops = np.linspace(0.0, 1.0, len(_TURBO_STOPS))
    lut = np.stack([np.interp(xs, stops, _TURBO_STOPS[:, c]) for c in range(3)], axis=1)
    return np.clip(np.rint(lut), 0, 255).astype(np.uint8)


_LUT = turbo_lut()


def resize_map(amap: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """A 2-D float map resized (bilinear) to hw = (H, W) as float32; non-finite values become 0."""
    a = np.nan_to_num(np.asarray(amap, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if a.ndim != 2:
        raise ValueError(f"anomaly map must be 2-D, got shape {a.shape}")
    if a.shape == tuple(hw):
        return a
    return np.asarray(Image.fromarray(a, mode="F").resize((hw[1], hw[0]), Image.Resampling.BILINEAR), dtype=np.float32)


def colorize(amap: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """A 2-D map as uint8 (h, w, 3) Turbo colours, vmin -> blue and vmax -> red (clipped)."""
    a = np.nan_to_num(np.asarray(amap, dtype=np.float64), nan=vmin, posinf=vmax, neginf=vmin)
    span = float(vmax) - float(vmin)
    t = (a - vmin) / span if span > 0 else (a > vmin).astype(np.float64)
    return _LUT[np.clip(np.rint(t * 255.0), 0, 255).astype(np.intp)]


def boundary(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The inner boundary of a bool mask: pixels of it with a 4-neighbour outside it (or the border)."""
    m = np.asarray(mask, dtype=bool)
    edge = np.zeros_like(m)
    inner = m.copy()
    for _ in range(max(1, int(thickness))):
        p = np.pad(inner, 1, constant_values=False)
        eroded = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
        edge |= inner & ~eroded
        inner = eroded
    return edge


def _mask_to(mask: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """A bool mask resized (nearest) to hw when its shape differs."""
    m = np.asarray(mask).astype(bool)
    if m.shape == tuple(hw):
        return m
    img = Image.fromarray(m.astype(np.uint8) * 255).resize((hw[1], hw[0]), Image.Resampling.NEAREST)
    return np.asarray(img) > 127


def overlay(
    image: np.ndarray,
    amap: np.ndarray,
    vmin: float,
    vmax: float,
    threshold: Optional[float] = None,
    gt_mask: Optional[np.ndarray] = None,
    alpha: float = 0.5,
    thickness: int = 1,
) -> np.ndarray:
    """The map (bilinear to the image) in Turbo blended over image, with predicted and GT contours."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {np.asarray(image).shape}")
    hw = img.shape[:2]
    a = resize_map(amap, hw)
    alpha = float(np.clip(alpha, 0.0, 1.0))
    out = (1.0 - alpha) * img.astype(np.float32) + alpha * colorize(a, vmin, vmax).astype(np.float32)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if threshold is not None:
        out[boundary(a >= threshold, thickness)] = PRED_COLOR
    if gt_mask is not None:
        out[boundary(_mask_to(gt_mask, hw), thickness)] = GT_COLOR
    return out


def save_png(path: str, rgb: np.ndarray) -> str:
    """Write a uint8 (H, W, 3) array as a PNG (creating its folder) and return the path."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(path, format="PNG")
    return path
