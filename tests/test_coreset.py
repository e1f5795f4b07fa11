"""Greedy k-center: exact against brute force, chunked against exact."""
import numpy as np
import pytest

from exdd.offline.coreset import bank_size, chunked_kcenter, coverage_radius, greedy_kcenter


def brute_greedy(x, k, start):
    """Farthest-point selection with a full distance matrix (the reference)."""
    d = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    sel = [start]
    mind = d[start].copy()
    for _ in range(1, k):
        j = int(np.argmax(mind))
        sel.append(j)
        mind = np.minimum(mind, d[j])
    return np.array(sel), float(mind.max())


def test_exact_greedy_equals_brute_force():
    x = np.random.default_rng(0).standard_normal((300, 6)).astype(np.float32)
    cs = greedy_kcenter(x, 25, seed=4)
    start = int(np.random.default_rng(4).integers(300))
    ref, radius = brute_greedy(x, 25, start)
    np.testing.assert_array_equal(cs.indices, ref)
    assert cs.indices[0] == start                     # includes its start point
    assert cs.radius == pytest.approx(radius, rel=1e-4)
    assert cs.radius == pytest.approx(coverage_radius(x, x[cs.indices]), rel=1e-4)


def test_deterministic_and_seed_dependent():
    x = np.random.default_rng(1).standard_normal((2000, 8)).astype(np.float32)
    a = chunked_kcenter(x, 60, seed=3, chunk_rows=500)
    b = chunked_kcenter(x, 60, seed=3, chunk_rows=500)
    c = chunked_kcenter(x, 60, seed=5, chunk_rows=500)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(np.sort(a.indices), np.sort(c.indices))


def test_chunked_is_exact_below_chunk_size_and_bound_holds_above():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal((1500, 8)) + c for c in (0, 4, 8)]).astype(np.float16)
    small = chunked_kcenter(x[:400], 20, seed=0, chunk_rows=1000)
    np.testing.assert_array_equal(small.indices, greedy_kcenter(x[:400], 20, seed=0).indices)
    cs = chunked_kcenter(x, 90, seed=0, chunk_rows=700)
    assert len(cs.indices) == 90 and len(set(cs.indices.tolist())) == 90
    true_r = coverage_radius(x, x[cs.indices])
    assert cs.radius_is_bound and true_r <= cs.radius * (1 + 1e-3)
    exact = greedy_kcenter(x, 90, seed=0)
    assert true_r <= 1.5 * exact.radius           # loose sanity; the benchmark records the real ratio


def test_bank_size_rule():
    assert bank_size(10_000_000, 0.01, 1000) == 100_000
    assert bank_size(50_000, 0.01, 1000) == 1000
    assert bank_size(300, 0.1, 1000) == 300      # small banks are kept whole
    assert bank_size(0, 0.1, 1000) == 0
