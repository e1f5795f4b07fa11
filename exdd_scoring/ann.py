"""Nearest-neighbour searchers behind one interface, chosen per repository: 'exact' and 'hnsw'.

A searcher answers ``nearest(queries) -> (distance float32 (n,), index int64 (n,))`` for (n, d)
float32 queries against one bank, like ``knn.nearest``.

- ``exact``: the chunked matmul search of ``knn`` (numpy or cupy); the default, and always used on GPU.
- ``hnsw``: a faiss ``IndexHNSWFlat`` (CPU) built at export time and stored in faiss's own binary
  format beside the bank (never pickle). Its returned distances are exact L2 distances to the
  neighbour it finds, so only a missed nearest neighbour changes a score.

The bank manifest's ``index`` entry names the kind, its parameters and, per bank, the index file
with its sha256 and the sha256 of the vectors it indexes; loading verifies both. faiss is imported
only when an hnsw index is used.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from .bank import BankError, sha256_file
from .knn import default_max_block, nearest, sq_norms
from .manifest import BankManifest, IndexEntry, IndexFile

INDEX_KEY = "index"
HNSW_DEFAULTS = {"m": 32, "ef_construction": 128, "ef_search": 64}  # measured: BENCHMARKS.md, Speed
LARGE_BANK, LARGE_EF_SEARCH = 50_000, 128  # from 50k vectors efSearch 64 missed rank correlation 0.99 (at 100k)


def ef_search_for(size: int, params: Optional[Dict[str, int]] = None) -> int:
    """efSearch of a bank of size vectors: the caller's, else 64 below LARGE_BANK vectors and 128 from it."""
    if params and "ef_search" in params:
        return int(params["ef_search"])
    return LARGE_EF_SEARCH if size >= LARGE_BANK else HNSW_DEFAULTS["ef_search"]


NO_FAISS = (
    "the banks carry an hnsw index but faiss is not importable in this Python: "
    "pip install faiss-cpu (or export the repository with --index exact)"
)


class IndexFileError(BankError):
    """An index that cannot be used: missing, corrupt, or made for other vectors."""


class ExactSearcher:
    """Exact chunked search (numpy or cupy)."""

    kind = "exact"

    def __init__(self, vectors: Any, xp: Any = np, max_block: Optional[int] = None):
        self.xp = xp
        self.max_block = int(max_block) if max_block is not None else default_max_block(xp)
        self.vectors = xp.asarray(vectors, dtype=xp.float32)
        self.sq = sq_norms(self.vectors, xp)

    def nearest(self, queries: Any) -> Tuple[Any, Any]:
        return nearest(queries, self.vectors, self.xp, self.sq, self.max_block)


class HnswSearcher:
    """faiss HNSW (CPU, numpy in and out)."""

    kind = "hnsw"

    def __init__(self, index: Any, ef_search: int = HNSW_DEFAULTS["ef_search"]):
        self.index = index
        self.index.hnsw.efSearch = int(ef_search)

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        m: int = HNSW_DEFAULTS["m"],
        ef_construction: int = HNSW_DEFAULTS["ef_construction"],
        ef_search: int = HNSW_DEFAULTS["ef_search"],
    ) -> "HnswSearcher":
        faiss = _faiss()
        vec = np.ascontiguousarray(vectors, dtype=np.float32)
        index = faiss.IndexHNSWFlat(vec.shape[1], int(m))
        index.hnsw.efConstruction = int(ef_construction)
        index.add(vec)
        return cls(index, ef_search)

    @classmethod
    def load(cls, path: str, ef_search: int = HNSW_DEFAULTS["ef_search"]) -> "HnswSearcher":
        return cls(_faiss().read_index(path), ef_search)

    def save(self, path: str) -> None:
        _faiss().write_index(self.index, path)

    def nearest(self, queries: Any) -> Tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        d2, idx = self.index.search(q, 1)
        return np.sqrt(np.maximum(d2[:, 0], 0.0)).astype(np.float32), idx[:, 0].astype(np.int64)


SEARCHERS: Dict[str, type] = {"exact": ExactSearcher, "hnsw": HnswSearcher}


def _faiss() -> Any:
    try:
        import faiss  # optional, only for hnsw
    except ImportError:
        raise IndexFileError(NO_FAISS) from None
    return faiss


def write_index(
    bank_dir: str,
    manifest: BankManifest,
    kind: str,
    min_size: int,
    params: Optional[Dict[str, int]] = None,
    log: Callable[[str], None] = lambda s: None,
) -> IndexEntry:
    """Build the index of every bank of at least min_size vectors in bank_dir; returns the manifest entry.

    Smaller banks stay exact (no file). The caller stores the entry as the manifest's ``index``.
    """
    if kind not in SEARCHERS:
        raise IndexFileError(f"index {kind!r}: expected one of {sorted(SEARCHERS)}")
    if kind == "exact":
        return IndexEntry(kind, int(min_size))
    p = dict(HNSW_DEFAULTS, **(params or {}))  # ef_search here is the default; each file records its own
    files: Dict[str, IndexFile] = {}
    for name in ("negative", "positive"):
        vec_file = f"{name}.npy"
        if vec_file not in manifest.files:
            continue
        vectors = np.load(os.path.join(bank_dir, vec_file), allow_pickle=False)
        if vectors.shape[0] < min_size:
            log(f"index: {name} bank has {vectors.shape[0]} vectors (< {min_size}): exact search")
            continue
        fname = f"{name}.{kind}"
        path = os.path.join(bank_dir, fname)
        ef = ef_search_for(vectors.shape[0], params)
        HnswSearcher.build(vectors, p["m"], p["ef_construction"], ef).save(path)
        files[name] = IndexFile(fname, sha256_file(path), manifest.files[vec_file].sha256, int(vectors.shape[0]), ef)
        log(f"index: {name} bank ({vectors.shape[0]} vectors) -> {fname} ({os.path.getsize(path) / 1e6:.1f} MB)")
    return IndexEntry(kind, int(min_size), p, files)


def searchers_from_manifest(bank_dir: str, manifest: BankManifest, xp: Any = np) -> Dict[str, Any]:
    """{'negative'|'positive': searcher} for the banks the manifest indexes (verified); {} for exact or on GPU."""
    entry = manifest.index
    if entry is None or entry.kind == "exact" or xp is not np:
        return {}
    kind = entry.kind
    if kind not in SEARCHERS:
        raise IndexFileError(f"{bank_dir}: manifest index kind {kind!r} is not one of {sorted(SEARCHERS)}")
    out = {}
    for name, f in entry.files.items():
        fname = f.file
        if name not in ("negative", "positive") or os.path.basename(fname) != fname or not fname:
            raise IndexFileError(f"{bank_dir}: manifest index entry {name!r} / {fname!r} is not a bank index file")
        path = os.path.join(bank_dir, fname)
        if not os.path.isfile(path):
            raise IndexFileError(f"{path}: index file named in the manifest is missing")
        if sha256_file(path) != f.sha256:
            raise IndexFileError(f"{path}: sha256 differs from the manifest (corrupt or replaced index)")
        bank_file = manifest.files.get(f"{name}.npy")
        if bank_file is None or bank_file.sha256 != f.vectors_sha256:
            raise IndexFileError(f"{path}: built for other {name} vectors than the bank's (rebuild the index)")
        ef = f.ef_search if f.ef_search is not None else entry.params.get("ef_search", HNSW_DEFAULTS["ef_search"])
        s = HnswSearcher.load(path, int(ef))
        if s.index.ntotal != f.size or s.index.d != manifest.features.d:
            raise IndexFileError(
                f"{path}: index holds {s.index.ntotal} x {s.index.d}, the bank {f.size} x {manifest.features.d}"
            )
        out[name] = s
    return out
