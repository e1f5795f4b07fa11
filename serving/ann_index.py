"""Export-time approximate nearest-neighbour index for a repository's copied banks (``--index hnsw``).

The index files are written beside the bank arrays in ``exdd_scorer/1/banks/`` in the library's own
binary format (faiss ``write_index``; no pickle) and the copied ``manifest.json`` gains an ``index``
entry with each file's sha256 and the sha256 of the vectors it indexes (see ``exdd_scoring.ann``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Dict, Optional

from exdd_scoring.ann import SEARCHERS, write_index
from exdd_scoring.bank import read_manifest, write_manifest
from exdd_scoring.manifest import IndexEntry

INDEX_KINDS = tuple(SEARCHERS)
# Below this many vectors a bank stays exact: exact was as fast as HNSW at 3k and 3x slower at 8k
# (BENCHMARKS.md, Speed).
DEFAULT_MIN_SIZE = 8_000


def add_index(
    bank_dir: str,
    kind: str,
    min_size: int = DEFAULT_MIN_SIZE,
    params: Optional[Dict[str, int]] = None,
    log: Callable[[str], None] = lambda s: None,
) -> IndexEntry:
    """Build the index files of the banks in bank_dir and record them in its manifest.json; returns the entry."""
    manifest = read_manifest(bank_dir)
    entry = write_index(bank_dir, manifest, kind, min_size, params, log)
    write_manifest(bank_dir, replace(manifest, index=entry))
    return entry
