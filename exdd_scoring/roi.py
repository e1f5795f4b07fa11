"""The region of interest (issue 27): where on the part the line inspects (white) and where it never looks.

The ROI is a mask over the image frame (any size: the image is resized whole to the model input, so is the mask).
`offline build --roi MASK.png` stores the file as it is (``roi.png``, for people and the report) and its
resampling to the model input (``roi.npy``, bool (H, W)), which every scoring path reads: the served model needs
no image decoder. Two rules, written once here:
- pixels: the mask at the model input size, by nearest sampling at each pixel's centre (``input_roi``);
- patches: a patch is inside when at least half of its cell (its stride-8 block of the input, as the defect-patch
  rule cuts cells) is inside (``patch_roi``). Patches outside never enter either bank, and their evidence is set
  to 0 (their distance to the normal bank) before the image score, so nothing outside can raise an alarm; the
  image-sized maps are 0 outside the pixel ROI.
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

ROI_PNG = "roi.png"
ROI_FILE = "roi.npy"
PATCH_COVER = 0.5  # a patch is inside the ROI when at least this share of its cell is


class RoiError(ValueError):
    """An ROI mask that cannot be used (wrong shape, nothing inside)."""


def input_roi(mask: np.ndarray, input_hw: Tuple[int, int], what: str = "ROI") -> np.ndarray:
    """(H, W) bool ROI at the model input size from a mask of any size (nonzero / True = inspect)."""
    m = np.asarray(mask)
    if m.ndim == 3:  # a colour mask: any channel lit counts
        m = m.max(axis=2)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise RoiError(f"{what}: expected a 2-D mask, got shape {tuple(np.asarray(mask).shape)}")
    h, w = int(input_hw[0]), int(input_hw[1])
    rows = np.minimum(((np.arange(h) + 0.5) * m.shape[0] / h).astype(int), m.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * m.shape[1] / w).astype(int), m.shape[1] - 1)
    out = m[rows][:, cols] > (127 if m.dtype == np.uint8 else 0)
    if not out.any():
        raise RoiError(f"{what}: the region of interest is empty at the model input size {h}x{w} (white = inspect)")
    return out


def cell_edges(n_pixels: int, n_cells: int) -> np.ndarray:
    """The n_cells + 1 pixel edges of the cells along one axis: the rounded equal splits (exactly 8 when it divides)."""
    return np.round(np.linspace(0, n_pixels, n_cells + 1)).astype(int)


def patch_roi(roi: np.ndarray, grid: Tuple[int, int], min_cover: float = PATCH_COVER) -> np.ndarray:
    """(h, w) bool: patches whose cell is at least min_cover inside the (H, W) input ROI."""
    H, W = roi.shape
    rows, cols = cell_edges(H, grid[0]), cell_edges(W, grid[1])
    c = np.pad(roi.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    tot = c[rows[1:]][:, cols[1:]] - c[rows[:-1]][:, cols[1:]] - c[rows[1:]][:, cols[:-1]] + c[rows[:-1]][:, cols[:-1]]
    area = np.outer(np.diff(rows), np.diff(cols)).clip(min=1)
    inside = tot / area >= min_cover
    if not inside.any():
        raise RoiError(f"the region of interest covers no patch of the {grid[0]}x{grid[1]} grid by half: widen it")
    return inside


def check_roi(roi: np.ndarray, input_hw: Tuple[int, int], where: str) -> np.ndarray:
    """A stored input ROI as bool (H, W) of the model input size; RoiError naming where otherwise."""
    if roi.ndim != 2 or tuple(roi.shape) != tuple(input_hw):
        raise RoiError(f"{where}: ROI of shape {tuple(roi.shape)}, expected the model input {tuple(input_hw)}")
    roi = roi.astype(bool)
    if not roi.any():
        raise RoiError(f"{where}: the region of interest is empty")
    return roi


def mask_patches(a: Any, patch_mask: Any) -> Any:
    """(B, P) per-patch distances with the patches outside the ROI ((P,) bool / 0-1) set to 0."""
    return a * patch_mask.reshape(1, -1).astype(a.dtype)


def mask_maps(maps: Any, pixel_mask: Any) -> Any:
    """(B, H, W) image maps with the pixels outside the ROI ((H, W) bool / 0-1) set to 0."""
    return maps * pixel_mask[None].astype(maps.dtype)
