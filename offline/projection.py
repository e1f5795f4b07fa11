"""The projection 1536 -> d of the extractor: seeded random, or fitted on the normal training patches (issue 25).

A registry (``PROJECTIONS``; ``exdd offline build --projection NAME`` offers its names, the default is
``exdd.defaults.PROJECTION``). A fitted kind is one function of the exact covariance of the normal patches:

- ``random``: the Gaussian matrix of ``--projection-seed`` (unit columns; nothing is fitted or stored).
- ``pca``: the top-d eigenvectors of the covariance of the aggregated 1536-d features of the normal training
  images (never the held-out or defective ones). Orthonormal columns, so of all d-dimensional orthogonal
  projections it keeps the most of the normal patches' variance. On ksdd1_dev it raised ``dual``'s image AUROC
  from 0.712 to 0.819 at the same d (BENCHMARKS.md).

No bias: kNN scores use L2 distances only, and ||(x - mu) P - (y - mu) P|| = ||(x - y) P||, so the centred and
the uncentred projection give the same distances; the extractor applies the plain matrix, like the random one.

Deterministic from the images, not from a seed: the covariance is accumulated exactly (every patch, float64,
batch by batch in the images' sorted order, so the 1536-d features of a big set are never held at once), the
eigenvectors come from ``numpy.linalg.eigh`` and each column's sign is fixed (its largest-magnitude component
positive). Same images, batch size, machine and torch thread count -> same bytes and projection_sha256 (torch's
CPU kernels may round the last bit differently elsewhere, as for every feature; the hash then differs and the
banks say so). At most ``defaults.PROJECTION_IMAGES`` normal images are read (evenly spaced in sorted order):
the fit costs one extra extraction pass over them, bounded on big sets; 1536 x 1536 needs far fewer patches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from exdd import defaults
from exdd.datasets import Sample, canonical_order
from exdd.registry import register_unique
from exdd_scoring.spec import RANDOM_PROJECTION


@dataclass(frozen=True)
class Projection:
    """A projection kind: fit(covariance (c, c) float64, d) -> (c, d) float32, None for the seeded random one."""

    name: str
    description: str
    fit: Optional[Callable[[np.ndarray, int], np.ndarray]] = None

    @property
    def fitted(self) -> bool:
        return self.fit is not None


PROJECTIONS: Dict[str, Projection] = {}


def register_projection(p: Projection) -> Projection:
    return register_unique(PROJECTIONS, p, "projection")


def projection_choices() -> List[str]:
    return list(PROJECTIONS)


def pca_projection(cov: np.ndarray, d: int) -> np.ndarray:
    """The top-d eigenvectors of a covariance, largest eigenvalue first, each with its largest-|component| positive."""
    c = cov.shape[0]
    if not 1 <= d <= c:
        raise ValueError(f"projection dimension d must be in 1..{c} for a pca projection, got {d}")
    val, vec = np.linalg.eigh(cov)
    top = vec[:, ::-1][:, :d]  # eigh: ascending eigenvalues
    big = np.argmax(np.abs(top), axis=0)
    top = top * np.where(top[big, np.arange(d)] < 0, -1.0, 1.0)[None, :]
    return np.ascontiguousarray(top, dtype=np.float32)


register_projection(Projection(RANDOM_PROJECTION, "seeded Gaussian matrix (--projection-seed), unit columns"))
register_projection(Projection("pca", "top-d principal directions of the normal training patches", pca_projection))


class Covariance:
    """The exact covariance of rows added batch by batch (float64 sums around the first batch's mean)."""

    def __init__(self, c: int):
        self.n = 0
        self.shift: Optional[np.ndarray] = None
        self.s = np.zeros(c)
        self.ss = np.zeros((c, c))

    def add(self, rows: np.ndarray) -> None:
        x = np.asarray(rows, dtype=np.float64)
        if self.shift is None:  # shifted sums: no cancellation when the mean is large
            self.shift = x.mean(axis=0)
        x = x - self.shift
        self.n += x.shape[0]
        self.s += x.sum(axis=0)
        self.ss += x.T @ x

    def value(self) -> np.ndarray:
        if self.n < 2:
            raise ValueError("a fitted projection needs at least 2 normal patches")
        m = self.s / self.n
        return (self.ss - self.n * np.outer(m, m)) / (self.n - 1)


def fit_samples(samples: Sequence[Sample], limit: int = defaults.PROJECTION_IMAGES) -> List[Sample]:
    """The normal images a projection is fitted on: in content order (``canonical_order``: not their names), at
    most limit (evenly spaced; 0: all)."""
    ordered = canonical_order(samples)
    if limit and len(ordered) > limit:
        ordered = [ordered[i] for i in np.linspace(0, len(ordered) - 1, limit).round().astype(int)]
    return ordered


def normal_covariance(
    model: Any,
    samples: Sequence[Sample],
    batch_size: int = defaults.BATCH_SIZE,
    progress: Optional[Callable[[int], None]] = None,
) -> Tuple[np.ndarray, int, list]:
    """(covariance of the raw 1536-d patch features, images read, unreadable (path, error)) of the samples;
    model: a FeatureExtractor (its ``raw`` features, whatever its projection)."""
    import torch  # here, not at import: the CLI reads the registry's names

    from .extract import batches

    errors: list = []
    cov, seen = None, 0
    for bs, imgs, _ in batches(samples, model.input_hw, batch_size, False, errors):
        with torch.inference_mode():
            raw = model.raw(torch.from_numpy(imgs)).numpy()
        if cov is None:
            cov = Covariance(raw.shape[-1])
        cov.add(raw.reshape(-1, raw.shape[-1]))
        seen += len(bs)
        if progress:
            progress(len(bs))
    if cov is None:
        raise ValueError("none of the normal training images could be read to fit the projection")
    return cov.value(), seen, errors


def fit_projection(
    kind: str,
    model: Any,
    samples: Sequence[Sample],
    d: int,
    batch_size: int = defaults.BATCH_SIZE,
    limit: int = defaults.PROJECTION_IMAGES,
    progress: Optional[Callable[[int], None]] = None,
) -> np.ndarray:
    """The (1536, d) matrix of a fitted kind on the normal training samples (model: any extractor on the backbone)."""
    p = PROJECTIONS.get(kind)
    fit = None if p is None else p.fit
    if fit is None:
        raise ValueError(
            f"projection {kind!r}: expected a fitted kind, one of "
            f"{', '.join(k for k, v in PROJECTIONS.items() if v.fitted)}"
        )
    cov, _, _ = normal_covariance(model, fit_samples(samples, limit), batch_size, progress)
    return fit(cov, d)
