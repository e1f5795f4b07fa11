"""Chunked exact nearest-neighbour search by matmul: ||a||^2 - 2ab + ||b||^2.

No distance block larger than ``max_block`` elements is ever materialised, whatever the
number of queries and bank elements.
"""

from __future__ import annotations

from typing import Any, Tuple

DEFAULT_MAX_BLOCK = 1 << 22  # 4 Mi float32 = 16 MiB per distance block (host memory, CPU caches)
GPU_MAX_BLOCK = 1 << 26  # 64 Mi float32 = 256 MiB per block on a GPU: 2.6x the scorer's frames/s of 4 Mi on an
# H200 at batch 32 (fewer, larger matmuls; BENCHMARKS.md "gpu_check"), a bounded share of a GPU's memory


def default_max_block(xp: Any) -> int:
    """The distance-block size for array module xp: larger on a GPU (CuPy), where launches, not memory, cost."""
    return GPU_MAX_BLOCK if getattr(xp, "__name__", "") == "cupy" else DEFAULT_MAX_BLOCK


def _chunks(nq: int, nb: int, max_block: int) -> Tuple[int, int]:
    """Query and bank chunk sizes with cq * cb <= max_block (each at least 1)."""
    cb = max(1, min(nb, max_block))
    cq = max(1, min(nq, max_block // cb))
    return cq, cb


def sq_norms(x: Any, xp: Any) -> Any:
    """Row-wise squared L2 norms in float32."""
    return xp.einsum("ij,ij->i", x, x).astype(xp.float32)


def nearest(
    queries: Any, bank: Any, xp: Any, bank_sq: Any = None, max_block: int = DEFAULT_MAX_BLOCK
) -> Tuple[Any, Any]:
    """Distance to, and index of, the nearest bank row for every query row (exact, chunked)."""
    nq, nb = queries.shape[0], bank.shape[0]
    if nb == 0:
        raise ValueError("nearest(): the bank is empty")
    if bank_sq is None:
        bank_sq = sq_norms(bank, xp)
    q_sq = sq_norms(queries, xp)
    best = xp.full((nq,), xp.inf, dtype=xp.float32)
    arg = xp.zeros((nq,), dtype=xp.int64)
    cq, cb = _chunks(nq, nb, max_block)
    for q0 in range(0, nq, cq):
        q = queries[q0 : q0 + cq]
        for b0 in range(0, nb, cb):
            block = q @ bank[b0 : b0 + cb].T
            block *= -2.0
            block += bank_sq[None, b0 : b0 + cb]
            i = xp.argmin(block, axis=1)
            v = xp.take_along_axis(block, i[:, None], axis=1)[:, 0]
            better = v < best[q0 : q0 + cq]
            best[q0 : q0 + cq] = xp.where(better, v, best[q0 : q0 + cq])
            arg[q0 : q0 + cq] = xp.where(better, i + b0, arg[q0 : q0 + cq])
    d2 = xp.maximum(best + q_sq, 0.0)
    return xp.sqrt(d2).astype(xp.float32), arg


def topk_nearest(queries: Any, bank: Any, k: int, xp: Any, max_block: int = DEFAULT_MAX_BLOCK) -> Tuple[Any, Any]:
    """The k nearest bank rows of every query row, sorted by distance (exact, chunked)."""
    nq, nb = queries.shape[0], bank.shape[0]
    k = min(k, nb)
    bank_sq = sq_norms(bank, xp)
    q_sq = sq_norms(queries, xp)
    # keep the whole bank axis per block so top-k is exact per query chunk
    cq = max(1, min(nq, max_block // max(nb, 1)))
    dist = xp.empty((nq, k), dtype=xp.float32)
    idx = xp.empty((nq, k), dtype=xp.int64)
    for q0 in range(0, nq, cq):
        block = queries[q0 : q0 + cq] @ bank.T
        block *= -2.0
        block += bank_sq[None, :]
        block += q_sq[q0 : q0 + cq, None]
        part = xp.argpartition(block, k - 1, axis=1)[:, :k] if k < nb else xp.tile(xp.arange(nb), (block.shape[0], 1))
        vals = xp.take_along_axis(block, part, axis=1)
        order = xp.argsort(vals, axis=1, kind="stable")
        idx[q0 : q0 + cq] = xp.take_along_axis(part, order, axis=1)
        dist[q0 : q0 + cq] = xp.sqrt(xp.maximum(xp.take_along_axis(vals, order, axis=1), 0.0))
    return dist, idx


def bank_neighbors(bank: Any, k: int, xp: Any, max_block: int = DEFAULT_MAX_BLOCK) -> Any:
    """For each bank row, its k-1 nearest other rows (the row itself dropped): shape (n, k-1).

    With duplicate rows the element itself may not come first; it is removed explicitly, and
    the k-th nearest fills its place.
    """
    n = bank.shape[0]
    if k < 2 or n < 2:
        return xp.zeros((n, 0), dtype=xp.int32)
    kk = min(k, n)
    _, idx = topk_nearest(bank, bank, kk, xp, max_block)
    own = xp.arange(n)[:, None]
    not_self = idx != own
    # rank within row keeping order; rows where self was absent drop their last column instead
    has_self = (~not_self).any(axis=1)
    keep = not_self.copy()
    keep[~has_self, -1] = False
    out = idx[keep].reshape(n, kk - 1)
    return out.astype(xp.int32)
