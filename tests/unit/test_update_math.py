"""Incremental bank updates, the math: continued k-center and extended neighbours (`exdd offline update` end to end
is tests/integration/test_update.py)."""

import numpy as np
import pytest

from exdd.offline.coreset import coverage_radius, extend_kcenter, greedy_kcenter
from exdd.offline.update import extend_neighbors
from exdd_scoring import Bank
from exdd_scoring.knn import bank_neighbors


def test_extend_kcenter_never_grows_the_radius():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2000, 8)).astype(np.float32)
    cs = greedy_kcenter(a, 60)
    r0 = coverage_radius(a, a[cs.indices])
    # new rows: the same distribution plus a far cluster the old centres do not cover
    b = np.concatenate([rng.standard_normal((500, 8)), rng.standard_normal((50, 8)) * 0.3 + 9.0]).astype(np.float32)
    ext = extend_kcenter(a[cs.indices], b, min_picks=5, radius=r0)
    centres = np.concatenate([a[cs.indices], b[ext.indices]])
    assert len(ext.indices) >= 5
    assert ext.radius <= r0 + 1e-5
    assert coverage_radius(np.concatenate([a, b]), centres) <= r0 + 1e-4
    assert ext.radius == pytest.approx(coverage_radius(b, centres), rel=1e-4, abs=1e-6)
    assert (ext.indices >= 500).any()  # the uncovered cluster got centres
    # already covered rows with no minimum: nothing to add
    none = extend_kcenter(a[cs.indices], a[:100], min_picks=0, radius=r0)
    assert len(none.indices) == 0 and none.radius <= r0 + 1e-5
    # min_picks above what coverage needs: exactly min_picks, farthest first
    more = extend_kcenter(a[cs.indices], b[:500], min_picks=40, radius=r0)
    assert len(more.indices) == 40 and len(set(more.indices.tolist())) == 40


def test_chunked_extend_keeps_the_radius_and_the_minimum():
    """Past chunk_rows the continued greedy runs per chunk: still >= min_picks, radius never grows, bound holds."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((3000, 8)).astype(np.float32)
    cs = greedy_kcenter(a, 80)
    r0 = coverage_radius(a, a[cs.indices])
    # four chunks; only the last holds a far cluster the old centres miss
    # (the cluster needs more centres than the chunk's share of min_picks: the merge must keep them all)
    b = np.concatenate([rng.standard_normal((1500, 8)), rng.standard_normal((100, 8)) + 9.0]).astype(np.float32)
    ext = extend_kcenter(a[cs.indices], b, min_picks=5, radius=r0, chunk_rows=400)
    assert ext.method.startswith("extend-chunked") and ext.radius_is_bound
    centres = np.concatenate([a[cs.indices], b[ext.indices]])
    true = coverage_radius(b, centres)
    assert len(ext.indices) >= 5 and len(set(ext.indices.tolist())) == len(ext.indices)
    # the true radius, computed apart from the greedy's own: float32 distances by |x|^2 + |c|^2 - 2xc round by about
    # eps32 x |x|^2 in d^2, so d by that / 2d: on the far cluster (|x|^2 ~ 650) about 2e-5, either way by CPU
    tol = 4 * float(np.finfo(np.float32).eps) * float((b.astype(np.float64) ** 2).sum(1).max()) / r0
    assert true <= ext.radius + tol and ext.radius <= r0 + 1e-5
    assert (ext.indices >= 1500).any()
    # one chunk: the exact continued greedy
    exact = extend_kcenter(a[cs.indices], b, min_picks=30, radius=r0, chunk_rows=10_000)
    assert exact.method == "extend" and not exact.radius_is_bound


def test_extend_neighbors_matches_full_recomputation():
    rng = np.random.default_rng(3)
    old = rng.standard_normal((300, 6)).astype(np.float32)
    new = rng.standard_normal((70, 6)).astype(np.float32)
    for k in (2, 3, 5):
        bank = Bank(old, bank_neighbors(old, k, np))
        got = extend_neighbors(bank, new, k)
        allv = np.concatenate([old, new])
        ref = bank_neighbors(allv, k, np)
        assert got.shape == ref.shape == (370, k - 1)
        dist = lambda nb: np.linalg.norm(allv[nb] - allv[:, None, :], axis=2)  # noqa: E731
        np.testing.assert_allclose(dist(got), dist(ref), rtol=1e-5, atol=1e-5)
        assert not (got == np.arange(370)[:, None]).any()
