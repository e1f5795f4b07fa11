"""Metrics against scikit-learn and a hand-computed AUPRO."""

import numpy as np
import pytest

sk = pytest.importorskip("sklearn.metrics")
from exdd.metrics import aupro, auroc, average_precision, f1_max  # noqa: E402


def test_auroc_ap_match_sklearn_with_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 15, 400).astype(float)
    y = rng.random(400) < 0.2 + 0.03 * s
    assert auroc(s, y) == pytest.approx(sk.roc_auc_score(y, s))
    assert average_precision(s, y) == pytest.approx(sk.average_precision_score(y, s))
    p, r, t = sk.precision_recall_curve(y, s)
    best = np.nanmax(2 * p * r / np.maximum(p + r, 1e-12))
    assert f1_max(s, y)[0] == pytest.approx(best)


def test_aupro_perfect_and_inverted():
    masks = np.zeros((2, 20, 20), bool)
    masks[0, 2:6, 2:6] = True
    masks[1, 10:18, 3:5] = True
    perfect = masks.astype(np.float32)
    assert aupro(perfect, masks) == pytest.approx(1.0)
    assert aupro(1.0 - perfect, masks) == pytest.approx(0.0, abs=1e-9)
    # one region fully found, the other never: PRO is 0.5 for every FPR in (0, 0.3]
    half = np.zeros_like(perfect)
    half[0][masks[0]] = 1.0
    half[1][~masks[1]] = np.linspace(0.1, 0.5, (~masks[1]).sum())
    assert aupro(half, masks, max_fpr=0.3) == pytest.approx(0.5, abs=0.02)


def test_metrics_do_not_need_numpy2(monkeypatch):
    """Regression (issue 12, defect 4): np.trapezoid exists only in NumPy >= 2; pyproject allows 1.24."""
    monkeypatch.delattr(np, "trapezoid", raising=False)
    rng = np.random.default_rng(1)
    s = rng.random(200)
    y = rng.random(200) < 0.3 + 0.4 * s
    assert auroc(s, y) == pytest.approx(sk.roc_auc_score(y, s))
    masks = np.zeros((1, 20, 20), bool)
    masks[0, 2:6, 2:6] = True
    assert aupro(masks.astype(np.float32), masks) == pytest.approx(1.0)


def test_metrics_module_runs_on_numpy_1(tmp_path):
    """The metrics file under a real NumPy 1.x interpreter (the Triton serving venv pins numpy<2)."""
    import os
    import subprocess

    from conftest import ROOT

    from exdd.serving.serving_env import VENV_ENV

    venv = os.environ.get(VENV_ENV) or str(ROOT / ".venv-serve")
    py = os.path.join(venv, "bin", "python")
    if not os.path.isfile(py):
        pytest.skip(f"no serving venv with NumPy 1.x at {venv}")
    import exdd.metrics as m

    code = (
        "import importlib.util, numpy as np, sys\n"
        "assert np.__version__.startswith('1.'), np.__version__\n"
        f"spec = importlib.util.spec_from_file_location('metrics', {m.__file__!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "print(mod.auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])))\n"
    )
    p = subprocess.run([py, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert float(p.stdout) == pytest.approx(0.75)


def _naive_bootstrap(s, y, n, seed, level):
    """Reference: the same resamples, AUROC of each from scratch."""
    from exdd.metrics import auroc

    draws = np.random.default_rng(seed).integers(0, s.shape[0], (n, s.shape[0]))
    v = np.array([auroc(s[r].ravel(), y[r].ravel()) for r in draws])
    v = v[np.isfinite(v)]
    return np.quantile(v, [(1 - level) / 2, (1 + level) / 2])


def test_bootstrap_auroc_image_level_matches_naive_resampling():
    from exdd.metrics import auroc, bootstrap_auroc

    rng = np.random.default_rng(1)
    y = rng.random(60) < 0.25
    s = rng.normal(size=60) + 1.2 * y
    s[:10] = np.round(s[:10])  # some ties
    point, lo, hi = bootstrap_auroc(s, y, n=300, seed=3, level=0.9)
    assert point == pytest.approx(auroc(s, y))
    ref = _naive_bootstrap(s, y, 300, 3, 0.9)
    assert (lo, hi) == pytest.approx(tuple(ref), abs=1e-12)
    assert lo < point < hi
    assert bootstrap_auroc(s, y, n=300, seed=3) == (point, lo, hi)  # seeded
    assert bootstrap_auroc(s, y, n=300, seed=4)[1:] != (lo, hi)
    # more data, narrower interval
    y2 = rng.random(2000) < 0.25
    s2 = rng.normal(size=2000) + 1.2 * y2
    _, lo2, hi2 = bootstrap_auroc(s2, y2, n=300)
    assert hi2 - lo2 < (hi - lo) / 2


def test_bootstrap_auroc_pixel_level_resamples_whole_maps():
    from exdd.metrics import auroc, bootstrap_auroc

    rng = np.random.default_rng(2)
    masks = np.zeros((12, 16, 16), bool)
    for i in range(0, 12, 2):
        masks[i, 4:9, 3 + i // 2 : 8 + i // 2] = True
    maps = np.round(rng.random(masks.shape) * 20 + 8 * masks * rng.random((12, 1, 1)))  # <= 4096 levels: exact
    point, lo, hi = bootstrap_auroc(maps, masks, n=200, seed=0)
    assert point == pytest.approx(auroc(maps.ravel(), masks.ravel()))
    assert (lo, hi) == pytest.approx(tuple(_naive_bootstrap(maps, masks, 200, 0, 0.9)), abs=1e-12)
    # continuous maps: binned, close to exact
    cont = rng.random(masks.shape) + 0.7 * masks * rng.random((12, 1, 1))
    p2, lo2, hi2 = bootstrap_auroc(cont, masks, n=200, seed=0, max_bins=256)
    ref = _naive_bootstrap(cont, masks, 200, 0, 0.9)
    assert p2 == pytest.approx(auroc(cont.ravel(), masks.ravel()), abs=5e-3)
    assert (lo2, hi2) == pytest.approx(tuple(ref), abs=5e-3)


def test_bootstrap_auroc_skips_one_class_resamples_and_checks_shapes():
    from exdd.metrics import bootstrap_auroc

    y = np.zeros(20, bool)
    y[0] = True  # most resamples miss the single positive
    s = np.arange(20.0)
    point, lo, hi = bootstrap_auroc(s, y, n=200)
    assert point == 0.0 and lo == 0.0 and hi == 0.0
    assert np.isnan(bootstrap_auroc(s, np.zeros(20), n=50)[0])
    with pytest.raises(ValueError):
        bootstrap_auroc(s, y[:10])


def test_bootstrap_auroc_big_maps_are_processed_in_chunks_exactly():
    from exdd.metrics import auroc, bootstrap_auroc

    rng = np.random.default_rng(5)
    masks = np.zeros((40, 200, 300), bool)  # 2.4 M pixels: more than one chunk of rows
    masks[::3, 50:90, 100:160] = True
    maps = rng.integers(0, 50, masks.shape) + 10 * masks * (np.arange(40) % 4)[:, None, None]
    point, lo, hi = bootstrap_auroc(maps, masks, n=8, seed=1)
    assert point == pytest.approx(auroc(maps.ravel(), masks.ravel()), abs=1e-12)
    assert (lo, hi) == pytest.approx(tuple(_naive_bootstrap(maps, masks, 8, 1, 0.9)), abs=1e-12)
