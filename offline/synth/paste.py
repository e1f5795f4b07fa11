"""CPU defect synthesis: a real defect cut out with its mask and Poisson-blended onto a normal image.

The defect's bounding box plus ``margin + 1`` pixels of context (reflected where the defect
touches its image's border) is cut from its image, flipped left-right with probability 1/2,
rotated by a random multiple of 90 degrees, shrunk (area interpolation) if it does not fit,
and placed at a uniformly random position fully inside the target image, one pixel from its
border. ``cv2.seamlessClone`` (NORMAL_CLONE) blends the whole cut-out rectangle (the defect
and its context, less the one-pixel ring OpenCV ignores): OpenCV solves the Poisson equation
over the mask's bounding rectangle, so a mask hugging a thin defect leaves a smooth brightness
halo across the rectangle, whereas blending the rectangle carries the source's own texture
matched to the target's brightness at the rectangle's border. Only the target's pixels inside
that rectangle change. The positive-patch mask is the pasted defect mask itself.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import cv2
import numpy as np


def _transform(a: np.ndarray, flip: bool, k: int) -> np.ndarray:
    if flip:
        a = a[:, ::-1]
    return np.ascontiguousarray(np.rot90(a, k))


def cut_defect(defect: np.ndarray, defect_mask: np.ndarray, pad: int) -> Tuple[np.ndarray, np.ndarray]:
    """(patch, bool mask): the defect's bounding box plus pad pixels of context (reflected past the border)."""
    ys, xs = np.nonzero(defect_mask)
    if ys.size == 0:
        raise ValueError("empty defect mask")
    img = cv2.copyMakeBorder(defect, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    msk = np.pad(defect_mask.astype(bool), pad)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1 + 2 * pad, xs.min(), xs.max() + 1 + 2 * pad
    return img[y0:y1, x0:x1], msk[y0:y1, x0:x1]


def paste_defect(
    normal: np.ndarray, defect: np.ndarray, defect_mask: np.ndarray, rng: np.random.Generator, margin: int = 4
) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
    """(image, bool mask, placement info): defect (RGB uint8 + bool mask) blended onto normal (RGB uint8)."""
    H, W = normal.shape[:2]
    if H < 8 or W < 8:
        raise ValueError(f"target image {H}x{W} is too small to paste into")
    src, msk = cut_defect(defect, defect_mask, margin + 1)
    flip, k = bool(rng.integers(2)), int(rng.integers(4))
    src, msk = _transform(src, flip, k), _transform(msk, flip, k)
    scale = min(1.0, (H - 2) / src.shape[0], (W - 2) / src.shape[1])
    if scale < 1.0:
        size = (max(3, int(src.shape[1] * scale)), max(3, int(src.shape[0] * scale)))
        src = cv2.resize(src, size, interpolation=cv2.INTER_AREA)
        msk = cv2.resize(msk.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        msk[0, :] = msk[-1, :] = False
        msk[:, 0] = msk[:, -1] = False
        if not msk.any():
            raise ValueError("defect mask vanished when shrunk to fit the target image")
    blend = np.ones_like(msk)
    blend[0, :] = blend[-1, :] = False  # OpenCV clears the outermost ring of the mask anyway
    blend[:, 0] = blend[:, -1] = False
    ys, xs = np.nonzero(blend)
    by, bx, bh, bw = ys.min(), xs.min(), ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min()
    ty = int(rng.integers(1, H - bh)) if H - bh > 1 else 0  # blend box at (ty, tx), inside the target
    tx = int(rng.integers(1, W - bw)) if W - bw > 1 else 0
    center = (tx + bw // 2, ty + bh // 2)  # OpenCV puts the mask's box at center - size // 2
    out = cv2.seamlessClone(
        np.ascontiguousarray(src),
        np.ascontiguousarray(normal),
        (blend * 255).astype(np.uint8),
        center,
        cv2.NORMAL_CLONE,
    )
    mask = np.zeros((H, W), bool)
    mask[ty : ty + bh, tx : tx + bw] = msk[by : by + bh, bx : bx + bw]
    info = {
        "flip_lr": flip,
        "rot90": k,
        "scale": round(float(scale), 6),
        "box_yxhw": [ty, tx, int(bh), int(bw)],
        "blend": "cv2.seamlessClone NORMAL_CLONE of the cut-out rectangle",
        "margin_px": margin,
    }
    return out, mask, info
