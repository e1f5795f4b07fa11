"""Chunked kNN against brute force."""

import numpy as np
import pytest

from exdd_scoring.knn import bank_neighbors, nearest, topk_nearest


def brute(q, b):
    return np.sqrt(((q[:, None, :].astype(np.float64) - b[None].astype(np.float64)) ** 2).sum(-1))


@pytest.mark.parametrize("max_block", [1, 7, 64, 1 << 22])
def test_nearest_matches_brute_force(max_block):
    rng = np.random.default_rng(1)
    q = rng.standard_normal((53, 16)).astype(np.float32)
    b = rng.standard_normal((41, 16)).astype(np.float32) * 2
    dist, idx = nearest(q, b, np, max_block=max_block)
    full = brute(q, b)
    np.testing.assert_array_equal(idx, full.argmin(1))
    np.testing.assert_allclose(dist, full.min(1), rtol=1e-4, atol=1e-4)


def test_nearest_exact_match_is_zero_and_empty_bank_raises():
    b = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    dist, idx = nearest(b[3:5], b, np)
    np.testing.assert_array_equal(idx, [3, 4])
    assert dist.max() < 1e-3
    with pytest.raises(ValueError, match="empty"):
        nearest(b, b[:0], np)


def test_topk_matches_brute_force():
    rng = np.random.default_rng(2)
    q = rng.standard_normal((30, 8)).astype(np.float32)
    b = rng.standard_normal((25, 8)).astype(np.float32)
    dist, idx = topk_nearest(q, b, 4, np, max_block=50)
    full = brute(q, b)
    np.testing.assert_array_equal(idx, np.argsort(full, 1)[:, :4])
    np.testing.assert_allclose(dist, np.sort(full, 1)[:, :4], rtol=1e-4, atol=1e-4)


def test_bank_neighbors_drop_self_even_with_duplicates():
    rng = np.random.default_rng(3)
    b = rng.standard_normal((20, 4)).astype(np.float32)
    b[7] = b[2]  # a duplicate row
    nb = bank_neighbors(b, 3, np)
    assert nb.shape == (20, 2) and nb.dtype == np.int32
    assert not (nb == np.arange(20)[:, None]).any()
    full = brute(b, b)
    np.fill_diagonal(full, np.inf)
    # the nearest other row is always among the neighbours
    assert all(full[i].argmin() in nb[i] or full[i].min() == full[i][nb[i][0]] for i in range(20))
    assert 7 in nb[2] and 2 in nb[7]


def test_the_default_block_is_larger_on_a_gpu_module_only():
    import types

    from exdd_scoring.knn import DEFAULT_MAX_BLOCK, GPU_MAX_BLOCK, default_max_block

    assert default_max_block(np) == DEFAULT_MAX_BLOCK
    assert default_max_block(types.ModuleType("cupy")) == GPU_MAX_BLOCK > DEFAULT_MAX_BLOCK
