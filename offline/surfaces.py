"""A generator of realistic-looking surface images with defects and masks (KSDD2 layout).

Three surface families, all grayscale textures seen in inspection: brushed metal (fine
directional streaks), commutator bars (bright bars with dark gaps) and a tile (ferrite-like
grain with a shading gradient). Defects: scratches (thin bright or dark polylines), spots
(blobs), cracks (random-walk dark lines) and stains (low-contrast patches). Everything is
seeded, so a dataset is a pure function of its arguments. Used by the demo and the tests.
"""

from __future__ import annotations

import os
from typing import Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy.ndimage import gaussian_filter

SURFACES = ("brushed", "commutator", "tile")
DEFECTS = ("scratch", "spot", "crack", "stain")


def _smooth_noise(rng: np.random.Generator, hw: Tuple[int, int], scale: float) -> np.ndarray:
    """Low-frequency noise in [-1, 1] by upsampling a coarse random grid."""
    h, w = hw
    from scipy.ndimage import zoom

    coarse = rng.standard_normal((max(2, int(h / scale)), max(2, int(w / scale))))
    a = zoom(coarse, (h / coarse.shape[0], w / coarse.shape[1]), order=3)[:h, :w]
    return a / (np.abs(a).max() + 1e-6)


def surface(rng: np.random.Generator, kind: str, hw: Tuple[int, int]) -> np.ndarray:
    """A defect-free surface of the given kind as float32 (H, W) in [0, 255]."""
    h, w = hw
    if kind == "brushed":
        streaks = rng.standard_normal((1, w)).repeat(h, 0) * 0.6 + rng.standard_normal((h, w)) * 0.15
        streaks = gaussian_filter(streaks, (0, 1))
        img = 140 + 18 * streaks + 20 * _smooth_noise(rng, hw, 80)
    elif kind == "commutator":
        period = rng.integers(18, 26)
        x = np.arange(w)
        bars = ((x + rng.integers(period)) % period) < period * 0.75
        img = np.where(bars[None, :], 175.0, 60.0) + 10 * _smooth_noise(rng, hw, 40) + rng.standard_normal((h, w)) * 4
        img = gaussian_filter(img, 0.8)
    elif kind == "tile":
        grain = gaussian_filter(rng.standard_normal((h, w)), 1.2)
        grad = np.linspace(-1, 1, h)[:, None] * rng.uniform(-20, 20)
        img = 110 + 25 * grain / (np.abs(grain).max() + 1e-6) + grad + 15 * _smooth_noise(rng, hw, 60)
    else:
        raise ValueError(f"unknown surface {kind!r}: {SURFACES}")
    return img.astype(np.float32)


def add_defect(rng: np.random.Generator, img: np.ndarray, kind: str) -> Tuple[np.ndarray, np.ndarray]:
    """The image with one defect of the given kind painted in, and its bool mask."""
    h, w = img.shape
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.15, 0.85) * h
    if kind == "scratch":
        pts = [(cx, cy)]
        ang = rng.uniform(0, np.pi)
        for _ in range(4):
            ang += rng.normal(0, 0.25)
            step = rng.uniform(0.08, 0.18) * h
            pts.append((pts[-1][0] + step * np.cos(ang), pts[-1][1] + step * np.sin(ang)))
        draw.line(pts, fill=255, width=int(rng.integers(3, 6)))
        delta = rng.choice([-1, 1]) * rng.uniform(60, 90)
    elif kind == "spot":
        r = rng.uniform(0.04, 0.09) * min(h, w)
        draw.ellipse([cx - r, cy - r * rng.uniform(0.6, 1.4), cx + r, cy + r * rng.uniform(0.6, 1.4)], fill=255)
        delta = -rng.uniform(60, 100)
    elif kind == "crack":
        pts = [(cx, cy)]
        for _ in range(int(rng.integers(25, 45))):
            pts.append(
                (pts[-1][0] + rng.normal(0, 3), pts[-1][1] + rng.uniform(2, 5) * rng.choice([-1, 1], p=[0.2, 0.8]))
            )
        draw.line(pts, fill=255, width=3)
        delta = -rng.uniform(70, 110)
    elif kind == "stain":
        r = rng.uniform(0.1, 0.16) * min(h, w)
        draw.ellipse([cx - r, cy - r, cx + r * 1.5, cy + r], fill=255)
        mask = mask.filter(ImageFilter.GaussianBlur(3))
        delta = rng.choice([-1, 1]) * rng.uniform(35, 50)
    else:
        raise ValueError(f"unknown defect {kind!r}: {DEFECTS}")
    soft = np.asarray(mask, dtype=np.float32) / 255.0
    out = img + delta * soft
    return out, soft > 0.5


def generate(
    root: str,
    n_train_normal: int = 40,
    n_train_defect: int = 8,
    n_test_normal: int = 16,
    n_test_defect: int = 16,
    size_hw: Tuple[int, int] = (320, 128),
    surface_kind: str = "brushed",
    seed: int = 0,
) -> str:
    """Write a KSDD2-layout dataset (train/, test/, NNNNN.png + NNNNN_GT.png) under root."""
    rng = np.random.default_rng(seed)
    for split, n_norm, n_def in (("train", n_train_normal, n_train_defect), ("test", n_test_normal, n_test_defect)):
        folder = os.path.join(root, split)
        os.makedirs(folder, exist_ok=True)
        for i in range(n_norm + n_def):
            jitter = (int(size_hw[0] * rng.uniform(0.9, 1.1)), int(size_hw[1] * rng.uniform(0.9, 1.1)))
            img = surface(rng, surface_kind, jitter)
            mask = np.zeros(jitter, dtype=bool)
            if i >= n_norm:
                img, mask = add_defect(rng, img, DEFECTS[i % len(DEFECTS)])
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(os.path.join(folder, f"{i:05d}.png"))
            Image.fromarray((mask * 255).astype(np.uint8)).save(os.path.join(folder, f"{i:05d}_GT.png"))
    return root
