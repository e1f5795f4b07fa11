"""The positive-patch mask of a generated sample: where the generated image differs from the original.

Rule (ExDD takes its synthetic defect patches from the difference between the original and
the generated image):

1. ``d = |gray(generated) - gray(original)|`` with ITU-R 601 luma, on uint8 images of the
   same size (the source normal image's size);
2. ``d`` is Gaussian-blurred with ``blur_sigma`` pixels (removes single-pixel resampling noise);
3. the region of interest ``R`` is the inpainting mask dilated by ``dilate_px`` pixels (a
   square structuring element); nothing outside ``R`` can be positive (resampling to the
   work size and back changes every pixel a little);
4. the threshold is ``t = max(Otsu(d within R), min_diff)``: Otsu separates the changed from
   the unchanged pixels of ``R``; the floor ``min_diff`` (grey levels) keeps an unchanged
   region from being split by noise;
5. positive = ``(d > t) & R``.

A sample whose positive mask is empty (the model changed nothing visible) is still written,
with an all-zero ``_GT.png``; ``datasets.synthetic`` skips such a sample (it has no defect
patch), and its sidecar records ``positive_pixels: 0``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict

import cv2
import numpy as np


@dataclass(frozen=True)
class DiffMaskRule:
    """The parameters of the difference-mask rule (see the module docstring)."""

    blur_sigma: float = 1.0
    dilate_px: int = 4
    min_diff: int = 12
    threshold: str = "otsu"

    def describe(self) -> Dict[str, object]:
        """The rule and its parameters, for the sidecar."""
        return {
            "rule": "positive = (blur(|gray(generated) - gray(original)|, sigma) > max(otsu_in_R, min_diff)) "
            "& R, R = inpaint mask dilated by dilate_px (square)",
            **asdict(self),
        }


def gray(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W) luma of a uint8 (H, W, 3) RGB or (H, W) gray image."""
    if rgb.ndim == 2:
        return rgb
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """A bool mask dilated by px pixels with a square element."""
    if px <= 0:
        return mask.astype(bool)
    k = np.ones((2 * px + 1, 2 * px + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), k) > 0


def diff_mask(
    original: np.ndarray, generated: np.ndarray, inpaint_mask: np.ndarray, rule: DiffMaskRule = DiffMaskRule()
) -> np.ndarray:
    """bool (H, W) positive-patch mask of generated vs original under rule."""
    if original.shape[:2] != generated.shape[:2] or original.shape[:2] != inpaint_mask.shape:
        raise ValueError(
            f"shape mismatch: original {original.shape}, generated {generated.shape}, mask {inpaint_mask.shape}"
        )
    d: np.ndarray = cv2.absdiff(gray(original), gray(generated)).astype(np.float32)
    if rule.blur_sigma > 0:
        d = cv2.GaussianBlur(d, (0, 0), rule.blur_sigma)
    region = dilate(inpaint_mask, rule.dilate_px)
    if not region.any():
        return np.zeros_like(region)
    d8 = np.clip(np.rint(d), 0, 255).astype(np.uint8)
    t = float(rule.min_diff)
    if rule.threshold == "otsu":
        otsu, _ = cv2.threshold(d8[region].reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        t = max(t, float(otsu))
    elif rule.threshold != "fixed":
        raise ValueError(f"unknown threshold {rule.threshold!r} (otsu, fixed)")
    return (d8 > t) & region
