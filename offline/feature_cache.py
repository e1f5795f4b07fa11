"""Unprojected (1536-channel) features of a dataset cached on disk, projected on demand.

Projection is linear and applied per patch, so features for any d are ``raw @ P_d``: one
extraction serves a whole sweep of projection dimensions or bank settings.
"""

from __future__ import annotations

import json
import os
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from exdd import defaults
from exdd.datasets import Sample
from exdd.images import ImageReadError

from .extract import Extracted, cell_cover, read_sample, run_extractor
from .features import CHANNELS, FeatureExtractor
from .weights import load_backbone


class RawCache:
    """Raw features (n, h, w, 1536) float16, per-patch mask coverage and full-size masks of one split."""

    def __init__(self, folder: str):
        self.folder = folder
        meta = json.load(open(os.path.join(folder, "meta.json")))
        self.paths: List[str] = meta["paths"]
        self.weights_id: str = meta["weights_id"]
        self.index = {p: i for i, p in enumerate(self.paths)}
        for i, p in enumerate(self.paths):  # the same file named another way (relative, through a link) finds it too
            self.index.setdefault(os.path.realpath(p), i)
        self.raw = np.load(os.path.join(folder, "raw.npy"), mmap_mode="r")
        self.covers = np.load(os.path.join(folder, "covers.npy"))
        self.masks = np.load(os.path.join(folder, "masks.npy"), mmap_mode="r")

    def row_of(self, path: str) -> Optional[int]:
        """The cache row of an image file (by the path it was cached under, else by its real path); None if absent."""
        row = self.index.get(path)
        return row if row is not None else self.index.get(os.path.realpath(path))

    def rows_of(self, samples: Sequence[Sample]) -> Tuple[List[Sample], List[int]]:
        """The samples found in the cache (in order) and their rows (row_of: by path, else by real path)."""
        found = [(s, self.row_of(s.path)) for s in samples]
        return [s for s, r in found if r is not None], [r for _, r in found if r is not None]

    def project(self, rows: Sequence[int], proj: np.ndarray, dtype=np.float16, chunk: int = 16) -> np.ndarray:
        """raw[rows] @ proj in chunks of images."""
        h, w = self.raw.shape[1:3]
        out = np.empty((len(rows), h, w, proj.shape[1]), dtype=dtype)
        for i in range(0, len(rows), chunk):
            r = list(rows[i : i + chunk])
            out[i : i + len(r)] = np.asarray(self.raw[r], dtype=np.float32) @ proj
        return out

    def featurizer(
        self, proj: np.ndarray
    ) -> Callable[[Sequence[Sample], bool, Optional[Callable[[int], None]]], Extracted]:
        """A build() featurizer serving cached features projected by proj."""

        def featurize(samples, with_mask, progress):
            kept, rows = self.rows_of(samples)
            if progress:
                progress(len(samples))
            return Extracted(self.project(rows, proj), self.covers[rows] if with_mask else None, kept, [])

        return featurize


def extract_raw(
    samples: Sequence[Sample],
    weights: str,
    input_hw: Tuple[int, int],
    folder: str,
    batch_size: int = defaults.BATCH_SIZE,
    progress: Optional[Callable[[int], None]] = None,
) -> RawCache:
    """Extract and store raw features of the readable samples (resumes a finished cache as is)."""
    if os.path.isfile(os.path.join(folder, "meta.json")):
        return RawCache(folder)
    os.makedirs(folder, exist_ok=True)
    backbone, wid = load_backbone(weights)
    model = FeatureExtractor(backbone, np.eye(sum(CHANNELS), dtype=np.float32), input_hw).eval()
    readable = []
    for s in samples:
        try:
            read_sample(s, input_hw, True)
            readable.append(s)
        except ImageReadError:
            continue
    from .features import grid_of

    grid = grid_of(input_hw)
    raw = np.lib.format.open_memmap(
        os.path.join(folder, "raw.npy"),
        mode="w+",
        dtype=np.float16,
        shape=(len(readable), grid[0], grid[1], sum(CHANNELS)),
    )
    masks = np.lib.format.open_memmap(
        os.path.join(folder, "masks.npy"), mode="w+", dtype=bool, shape=(len(readable),) + tuple(input_hw)
    )
    covers = np.zeros((len(readable),) + grid, dtype=np.float32)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for i in range(0, len(readable), batch_size):
        pairs = [read_sample(s, input_hw, True) for s in readable[i : i + batch_size]]
        raw[i : i + len(pairs)] = run_extractor(model, np.stack([p[0] for p in pairs]))
        for j, (_, m) in enumerate(pairs):
            assert m is not None  # read with its mask
            masks[i + j] = m
            covers[i + j] = cell_cover(m, grid)
        if progress:
            progress(len(pairs))
    raw.flush()
    masks.flush()
    np.save(os.path.join(folder, "covers.npy"), covers)
    json.dump(
        {"paths": [s.path for s in readable], "weights_id": wid, "input_size": list(input_hw)},
        open(os.path.join(folder, "meta.json"), "w"),
    )
    return RawCache(folder)
