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
    from exdd.export.serving_env import VENV_ENV
    venv = os.environ.get(VENV_ENV) or os.path.join(os.path.dirname(os.path.dirname(__file__)), ".venv-serve")
    py = os.path.join(venv, "bin", "python")
    if not os.path.isfile(py):
        pytest.skip(f"no serving venv with NumPy 1.x at {venv}")
    import exdd.metrics as m
    code = ("import importlib.util, numpy as np, sys\n"
            "assert np.__version__.startswith('1.'), np.__version__\n"
            f"spec = importlib.util.spec_from_file_location('metrics', {m.__file__!r})\n"
            "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
            "print(mod.auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])))\n")
    p = subprocess.run([py, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert float(p.stdout) == pytest.approx(0.75)
