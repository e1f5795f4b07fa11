"""Greedy k-center (farthest point) coreset selection, exact and chunked.

``greedy_kcenter`` is exact greedy: k x N x d work, never an N x N matrix, memory O(N).
``chunked_kcenter`` scales it to millions of patches: greedy runs inside contiguous chunks
(whole images, since rows are image-major) with an oversampled budget, recording the distance
at which every pick was made; those values fall within each chunk, so taking the k largest
over all chunks keeps a prefix of every chunk's greedy order -- the merge gives more centres
to chunks that are harder to cover, as global greedy would. Every patch is within the reported
radius bound of a kept patch of its own chunk, so the bound is a true upper bound on coverage.
``extend_kcenter`` continues greedy from an existing bank's centres (bank updates), chunked the same way.

No seed: greedy (and every chunk's greedy) starts at ``start_row``, the row farthest from the rows' mean, so the
same rows give the same coreset on any machine and whatever the build seed (issue 25). Any start keeps greedy's
2-approximation; an extreme row is one greedy would pick within its first few anyway, whereas a random start spends
the first centre on an arbitrary (usually typical) row and made the banks -- and the served image ranking -- move
with the seed. It does not depend on the order of the rows within a chunk (ties aside); the build puts the images
in a content-defined order (exdd.datasets.canonical_order), which fixes the chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np

from exdd import defaults


@dataclass
class Coreset:
    """Selected row indices (selection order), the coverage radius and how it was obtained."""

    indices: np.ndarray
    radius: float
    radius_is_bound: bool
    method: str


def bank_size(n: int, ratio: float, min_size: int) -> int:
    """Elements a bank keeps: max(ratio x n, min_size), capped at n (authors' rule)."""
    return int(min(n, max(int(round(ratio * n)), min_size)))


def start_row(x: np.ndarray, sq: Optional[np.ndarray] = None) -> int:
    """The deterministic first centre of greedy: the row of float32 x farthest from the rows' mean (first on ties).

    ||x_i - mu||^2 = ||x_i||^2 - 2 x_i.mu (+ a constant): one pass, no seed. sq: the rows' squared norms when known.
    """
    if sq is None:
        sq = np.einsum("ij,ij->i", x, x)
    mu = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    return int(np.argmax(sq - 2.0 * (x @ mu)))


def greedy_picks(x: np.ndarray, m: int, start: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy picks on float32 rows x from ``start`` (default ``start_row``): (indices (<=m,), values (len+1,)).

    values[i] is the distance at which pick i was made (inf for the start), and the last value
    is the coverage radius after all picks. Stops early once every row is covered exactly.
    """
    sq = np.einsum("ij,ij->i", x, x)
    if start is None:
        start = start_row(x, sq)
    mind = sq + (float(sq[start]) - 2.0 * (x @ x[start]))
    mind[start] = 0.0
    sel, vals = _extend_greedy(x, mind, min(m, x.shape[0]) - 1, math.inf, sq)
    return np.concatenate([[start], sel]).astype(np.int64), np.concatenate([[math.inf], vals])


def greedy_kcenter(x: np.ndarray, k: int) -> Coreset:
    """Exact greedy k-center on all rows of x, starting at ``start_row``."""
    n = x.shape[0]
    if n == 0 or k <= 0:
        return Coreset(np.zeros(0, np.int64), 0.0, False, "exact")
    sel, vals = greedy_picks(np.ascontiguousarray(x, dtype=np.float32), k)
    return Coreset(sel, float(vals[-1]), False, "exact")


def chunked_kcenter(
    x: np.ndarray,
    k: int,
    chunk_rows: int = defaults.CHUNK_ROWS,
    oversample: float = defaults.OVERSAMPLE,
    progress: Optional[Callable[[int], None]] = None,
) -> Coreset:
    """Approximate greedy k-center for large N: per-chunk greedy, merged by pick distance.

    x may be float16 (converted chunk by chunk). Exact greedy when N <= chunk_rows.
    """
    n = x.shape[0]
    if n <= chunk_rows or k >= n:
        if k >= n:
            return Coreset(np.arange(n, dtype=np.int64), 0.0, False, "all")
        return greedy_kcenter(x, k)
    n_chunks = math.ceil(n / chunk_rows)
    bounds = np.linspace(0, n, n_chunks + 1).round().astype(np.int64)
    picks, radii = [], []
    for c in range(n_chunks):
        a, b = int(bounds[c]), int(bounds[c + 1])
        budget = max(1, math.ceil(oversample * k * (b - a) / n))
        sel, vals = greedy_picks(np.ascontiguousarray(x[a:b], dtype=np.float32), budget)
        picks.append(sel + a)
        radii.append(vals)
        if progress:
            progress(b - a)
    return merge_chunks(picks, radii, k, f"chunked(rows={chunk_rows},oversample={oversample})")


def merge_chunks(picks: list, radii: list, k: int, method: str, min_take: Optional[list] = None) -> Coreset:
    """The merge of chunked greedy: per chunk, its global pick indices and the distances at which they were made
    (plus the final radius); keeps the k largest pick distances over all chunks (ties by chunk, then position, so
    every chunk keeps a prefix of its greedy order), at least ``min_take[c]`` picks of chunk c, and bounds the
    coverage radius."""
    n_chunks = len(picks)
    values = [r[:-1] for r in radii]
    all_vals = np.concatenate(values)
    owner = np.concatenate([np.full(len(v), c) for c, v in enumerate(values)])
    pos = np.concatenate([np.arange(len(v)) for v in values])
    order = np.lexsort((pos, owner, -all_vals))[:k]
    take = np.zeros(n_chunks, dtype=np.int64)
    np.maximum.at(take, owner[order], pos[order] + 1)
    if min_take is not None:
        take = np.maximum(take, np.minimum(np.asarray(min_take, dtype=np.int64), [len(v) for v in values]))
    sel = np.concatenate([picks[c][: take[c]] for c in range(n_chunks)])
    bound = max(float(radii[c][take[c]]) if take[c] < len(radii[c]) else float(radii[c][-1]) for c in range(n_chunks))
    return Coreset(sel, bound, True, method)


def coverage_radius(x: np.ndarray, centers: np.ndarray, max_block: int = 1 << 22) -> float:
    """Exact max over rows of the distance to the nearest centre row (chunked)."""
    from exdd_scoring.knn import nearest

    dist, _ = nearest(
        np.ascontiguousarray(x, dtype=np.float32),
        np.ascontiguousarray(centers, dtype=np.float32),
        np,
        max_block=max_block,
    )
    return float(dist.max())


def _extend_greedy(
    xf: np.ndarray, mind: np.ndarray, min_picks: int, r2: float, sq: Optional[np.ndarray] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy picks over float32 rows xf continued from squared distances mind (updated in place).

    Picks the farthest row until ``min_picks`` are picked and every row is within sqrt(r2); returns
    (indices, values): values[i] is the distance of pick i, the last value the coverage radius after.
    sq: the rows' squared norms when the caller has them.
    """
    n = xf.shape[0]
    if sq is None:
        sq = np.einsum("ij,ij->i", xf, xf)
    buf = np.empty(n, dtype=np.float32)
    sel: List[int] = []
    vals: List[float] = []
    while len(sel) < n:
        j = int(np.argmax(mind))
        v = float(mind[j])
        if v <= 0.0 or (len(sel) >= min_picks and v <= r2):
            break
        sel.append(j)
        vals.append(math.sqrt(v))
        np.dot(xf, xf[j], out=buf)
        buf *= -2.0
        buf += sq
        buf += sq[j]
        np.minimum(mind, buf, out=mind)
        mind[j] = 0.0
    vals.append(math.sqrt(max(float(mind.max()), 0.0)) if n else 0.0)
    return np.asarray(sel, dtype=np.int64), np.asarray(vals, dtype=np.float64)


def extend_kcenter(
    centers: np.ndarray,
    x: np.ndarray,
    min_picks: int,
    radius: float,
    chunk_rows: int = defaults.CHUNK_ROWS,
    oversample: float = defaults.OVERSAMPLE,
    max_block: int = 1 << 22,
    progress: Optional[Callable[[int], None]] = None,
) -> Coreset:
    """Greedy k-center continued from existing centres over new rows x (incremental update).

    Every new row starts at its distance to the nearest existing centre; greedy then picks the
    farthest new row until at least ``min_picks`` rows are picked *and* every new row is within
    ``radius`` (the existing bank's coverage radius) of a centre -- so adding rows never makes
    the coverage radius grow. Up to ``chunk_rows`` new rows this is exact greedy (radius exact);
    beyond, it runs per chunk with an oversampled share of ``min_picks`` and merges by pick
    distance as ``chunked_kcenter`` does, keeping in every chunk all picks made above ``radius``
    (radius reported as a bound). Returns the picked rows of x; memory O(len(x)).
    """
    from exdd_scoring.knn import nearest

    n = x.shape[0]
    if n == 0:
        return Coreset(np.zeros(0, np.int64), 0.0, False, "extend")
    cf = np.ascontiguousarray(centers, dtype=np.float32)
    r2 = float(radius) ** 2

    def start_dist(xf: np.ndarray) -> np.ndarray:
        if cf.shape[0] == 0:
            return np.full(xf.shape[0], np.inf, dtype=np.float32)
        dist, _ = nearest(xf, cf, np, max_block=max_block)
        return dist.astype(np.float32) ** 2

    if n <= chunk_rows:
        xf = np.ascontiguousarray(x, dtype=np.float32)
        sel, vals = _extend_greedy(xf, start_dist(xf), min_picks, r2)
        if progress:
            progress(n)
        return Coreset(sel, float(vals[-1]), False, "extend")
    n_chunks = math.ceil(n / chunk_rows)
    bounds = np.linspace(0, n, n_chunks + 1).round().astype(np.int64)
    picks, radii, above = [], [], []
    for c in range(n_chunks):
        a, b = int(bounds[c]), int(bounds[c + 1])
        xf = np.ascontiguousarray(x[a:b], dtype=np.float32)
        budget = math.ceil(oversample * min_picks * (b - a) / n)
        sel, vals = _extend_greedy(xf, start_dist(xf), budget, r2)
        picks.append(sel + a)
        radii.append(vals)
        above.append(int((vals[:-1] > radius).sum()))
        if progress:
            progress(b - a)
    return merge_chunks(
        picks, radii, min_picks, f"extend-chunked(rows={chunk_rows},oversample={oversample})", min_take=above
    )
