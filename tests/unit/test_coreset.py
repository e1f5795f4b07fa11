"""Greedy k-center: exact against brute force, chunked against exact."""

import numpy as np
import pytest

from exdd.offline.coreset import bank_size, chunked_kcenter, coverage_radius, greedy_kcenter, start_row


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
    cs = greedy_kcenter(x, 25)
    start = int(np.argmax(((x.astype(np.float64) - x.mean(0)) ** 2).sum(1)))  # the row farthest from the mean
    ref, radius = brute_greedy(x, 25, start)
    np.testing.assert_array_equal(cs.indices, ref)
    assert cs.indices[0] == start  # includes its start point
    assert cs.radius == pytest.approx(radius, rel=1e-4)
    assert cs.radius == pytest.approx(coverage_radius(x, x[cs.indices]), rel=1e-4)


def test_deterministic_in_the_rows_with_no_seed():
    """Issue 25: the same rows give the same coreset (no seed), and each chunk's start does not depend on the order
    of its rows: a chunk's rows shuffled in place give the same picked rows."""
    x = np.random.default_rng(1).standard_normal((2000, 8)).astype(np.float32)
    a = chunked_kcenter(x, 60, chunk_rows=500)
    np.testing.assert_array_equal(a.indices, chunked_kcenter(x.copy(), 60, chunk_rows=500).indices)
    perm = np.concatenate([c * 500 + np.random.default_rng(c).permutation(500) for c in range(4)])
    b = chunked_kcenter(x[perm], 60, chunk_rows=500)
    assert {tuple(r) for r in x[a.indices]} == {tuple(r) for r in x[perm][b.indices]}
    assert (a.radius, a.radius_is_bound) == (b.radius, b.radius_is_bound)


def test_start_row_is_the_row_farthest_from_the_mean():
    x = np.random.default_rng(3).standard_normal((500, 5)).astype(np.float32)
    x[123] += 10.0
    assert start_row(x) == 123
    assert greedy_kcenter(x, 5).indices[0] == 123


def test_chunked_is_exact_below_chunk_size_and_bound_holds_above():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal((1500, 8)) + c for c in (0, 4, 8)]).astype(np.float16)
    small = chunked_kcenter(x[:400], 20, chunk_rows=1000)
    np.testing.assert_array_equal(small.indices, greedy_kcenter(x[:400], 20).indices)
    cs = chunked_kcenter(x, 90, chunk_rows=700)
    assert len(cs.indices) == 90 and len(set(cs.indices.tolist())) == 90
    true_r = coverage_radius(x, x[cs.indices])
    assert cs.radius_is_bound and true_r <= cs.radius * (1 + 1e-3)
    exact = greedy_kcenter(x, 90)
    assert true_r <= 1.5 * exact.radius  # loose sanity; the benchmark records the real ratio


def test_bank_size_rule():
    assert bank_size(10_000_000, 0.01, 1000) == 100_000
    assert bank_size(50_000, 0.01, 1000) == 1000
    assert bank_size(300, 0.1, 1000) == 300  # small banks are kept whole
    assert bank_size(0, 0.1, 1000) == 0
