"""Running the feature extractor over dataset samples, in batches, with per-file errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from exdd import defaults
from exdd.datasets import Sample
from exdd.images import ImageReadError, image_size, read_image, read_mask
from exdd.log import get as _logger

log = _logger(__name__)


@dataclass
class Extracted:
    """Features (n, h, w, d) of the samples that could be read, their coverage maps and the errors."""

    features: np.ndarray
    covers: Optional[np.ndarray]
    samples: List[Sample]
    errors: List[Tuple[str, str]] = field(default_factory=list)


def cell_cover(mask: np.ndarray, grid: Tuple[int, int]) -> np.ndarray:
    """Fraction of each patch cell covered by the mask: (H, W) bool -> (h, w) float32.

    A patch's cell is its stride-8 block of the resized input (exactly 8x8 at 632x224); for sizes
    that do not divide, cells are the rounded equal splits of each axis.
    """
    H, W = mask.shape
    rows = np.round(np.linspace(0, H, grid[0] + 1)).astype(int)
    cols = np.round(np.linspace(0, W, grid[1] + 1)).astype(int)
    c = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    tot = c[rows[1:]][:, cols[1:]] - c[rows[:-1]][:, cols[1:]] - c[rows[1:]][:, cols[:-1]] + c[rows[:-1]][:, cols[:-1]]
    area = np.outer(np.diff(rows), np.diff(cols)).clip(min=1)
    return (tot / area).astype(np.float32)


def read_sample(s: Sample, size_hw: Tuple[int, int], with_mask: bool) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Image (uint8 H, W, 3) and mask (bool H, W, resized) of a sample; ImageReadError names the file."""
    img = read_image(s.path, size_hw)
    if not with_mask:
        return img, None
    if s.mask is None:
        return img, np.zeros(size_hw, dtype=bool)
    return img, read_mask(s.mask, image_size(s.path), size_hw)


def batches(
    samples: Sequence[Sample], size_hw: Tuple[int, int], batch_size: int, with_mask: bool, errors: List[Tuple[str, str]]
) -> Iterator[Tuple[List[Sample], np.ndarray, List[Optional[np.ndarray]]]]:
    """Readable samples in batches of (samples, images (b, H, W, 3), masks); bad files go to errors."""
    buf: List[Tuple[Sample, np.ndarray, Optional[np.ndarray]]] = []
    for s in samples:
        try:
            img, m = read_sample(s, size_hw, with_mask)
        except ImageReadError as e:
            errors.append((s.path, str(e)))
            log.error("%s (skipped)", e)
            continue
        buf.append((s, img, m))
        if len(buf) == batch_size:
            yield [b[0] for b in buf], np.stack([b[1] for b in buf]), [b[2] for b in buf]
            buf = []
    if buf:
        yield [b[0] for b in buf], np.stack([b[1] for b in buf]), [b[2] for b in buf]


@torch.inference_mode()
def run_extractor(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """Features (b, h, w, d) float32 of a uint8 (b, H, W, 3) batch."""
    return model(torch.from_numpy(images)).numpy()


def extract(
    samples: Sequence[Sample],
    model: torch.nn.Module,
    size_hw: Tuple[int, int],
    grid: Tuple[int, int],
    d: int,
    batch_size: int = defaults.BATCH_SIZE,
    with_mask: bool = False,
    dtype=np.float16,
    progress: Optional[Callable[[int], None]] = None,
) -> Extracted:
    """Features of all readable samples, stored as dtype; masks become per-patch coverage."""
    errors: List[Tuple[str, str]] = []
    feats = np.empty((len(samples), grid[0], grid[1], d), dtype=dtype)
    covers = np.zeros((len(samples), grid[0], grid[1]), dtype=np.float32) if with_mask else None
    kept: List[Sample] = []
    for bs, imgs, masks in batches(samples, size_hw, batch_size, with_mask, errors):
        f = run_extractor(model, imgs)
        n0 = len(kept)
        feats[n0 : n0 + len(bs)] = f
        if covers is not None:  # with_mask: every mask read
            for i, m in enumerate(masks):
                assert m is not None
                covers[n0 + i] = cell_cover(m, grid)
        kept += bs
        if progress:
            progress(len(bs))
    n = len(kept)
    if progress and len(samples) > n:
        progress(len(samples) - n)
    return Extracted(feats[:n], covers[:n] if covers is not None else None, kept, errors)
