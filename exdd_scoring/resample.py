"""Upsampling of patch maps to the image and Gaussian smoothing, as two small matrices.

Bilinear upsampling (torch ``align_corners=False`` semantics) followed by a Gaussian filter
(scipy ``gaussian_filter`` semantics: mode 'reflect', truncate 4) is linear and separable, so
``map_full = S_h @ map @ S_w.T`` with ``S = G @ U`` for each axis. The same code runs on numpy
and cupy and costs a few MFLOP per image.
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np


def bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D bilinear interpolation, align_corners=False (as torch)."""
    m = np.zeros((n_out, n_in), dtype=np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = max(scale * (i + 0.5) - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        m[i, i0] += 1.0 - lam
        m[i, i1] += lam
    return m


def _reflect(j: int, n: int) -> int:
    """Index j folded into [0, n) with half-sample symmetric reflection (scipy 'reflect')."""
    period = 2 * n
    j %= period
    return j if j < n else period - 1 - j


def gaussian_matrix(n: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """(n, n) matrix of a 1-D Gaussian filter with 'reflect' borders (as scipy.ndimage)."""
    if sigma <= 0:
        return np.eye(n)
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w /= w.sum()
    m = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        for off, wk in zip(range(-radius, radius + 1), w):
            m[i, _reflect(i + off, n)] += wk
    return m


def upsample_smooth_matrices(
    grid_hw: Tuple[int, int], out_hw: Tuple[int, int], sigma: float
) -> Tuple[np.ndarray, np.ndarray]:
    """Row and column operators (S_h, S_w) taking a grid map to a smoothed image-sized map."""
    sh = gaussian_matrix(out_hw[0], sigma) @ bilinear_matrix(out_hw[0], grid_hw[0])
    sw = gaussian_matrix(out_hw[1], sigma) @ bilinear_matrix(out_hw[1], grid_hw[1])
    return sh.astype(np.float32), sw.astype(np.float32)


def upsample_smooth(maps: Any, s_h: Any, s_w: Any, xp: Any) -> Any:
    """(B, h, w) patch maps -> (B, H, W) smoothed maps, with operators from upsample_smooth_matrices."""
    return xp.matmul(xp.matmul(s_h[None], maps), s_w.T[None]).astype(xp.float32)
