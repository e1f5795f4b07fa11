"""The pooled image scores of issue 25 served: a real Triton server on a repository of two products of the tiny
banks, one serving `head` (a fitted head written into its manifest), one `dual_topk` (a top-k fraction written into
its manifest); each answers its offline Scorer's score and map within SCORE_RTOL. And the tiny build itself: the
head, fitted or its fallback, is in the manifest with the reason."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import triton_util as tu

from exdd_scoring import read_manifest
from exdd_scoring.scores import HEAD_FEATURES

pytestmark = pytest.mark.triton
OUTPUTS = ("SCORE", "SCORE_NEG", "SCORE_POS", "ANOMALY_MAP")
HEAD = {
    "features": list(HEAD_FEATURES),
    "mean": [0.5, 0.2, 0.1, -0.3, 0.05, 1.0, 0.5],
    "scale": [1.0, 2.0, 0.5, 1.5, 0.1, 1.0, 2.0],
    "coef": [0.8, 1.2, -0.4, 0.3, 2.0, 0.6, -0.9],
    "intercept": 10.0,
    "fitted": True,
    "cv_auroc": 0.8,
    "fallback_cv_auroc": 0.7,
    "folds": 5,
    "crossfit": 3,
}


def _banks(name: str, mode: str, scoring: dict) -> str:
    """A copy of the tiny banks whose manifest serves mode with these scoring entries."""
    out = os.path.join(tu.workdir(), f"banks-{name}")
    if not os.path.isdir(out):
        shutil.copytree(tu.banks(), out)
        path = os.path.join(out, "manifest.json")
        m = json.load(open(path))
        m["default_mode"] = mode
        m["scoring"].update(scoring)
        m["threshold"]["values"][mode] = 1.0
        json.dump(m, open(path, "w"), indent=2)
    return out


@pytest.fixture(scope="module")
def served():
    from exdd.serving.configs import Serving
    from exdd.serving.repository import assemble_products

    banks = {"head": _banks("head", "head", {"head": HEAD}), "topk": _banks("topk", "dual_topk", {"topk": 0.05})}
    repo = assemble_products(
        tu.onnx_fp32(),
        banks,
        os.path.join(tu.workdir(), "repo-image-head"),
        "python",
        Serving("cpu", 1, 8, 5000),
        force=True,
    ).path
    s = tu.start_server(repo)
    yield s, banks
    s.stop()


def _infer(url, model, images):
    import tritonclient.http as th

    with th.InferenceServerClient(url, network_timeout=120) as c:
        inp = th.InferInput("IMAGE", list(images.shape), "UINT8")
        inp.set_data_from_numpy(images)
        r = c.infer(model, [inp])
        return {n: r.as_numpy(n) for n in OUTPUTS}


def test_served_head_and_topk_match_the_offline_scorer(served):
    server, banks = served
    imgs = tu.sample_images(4)
    for product, bank_dir in banks.items():
        m = read_manifest(bank_dir)
        assert m.default_mode == {"head": "head", "topk": "dual_topk"}[product]
        ref = tu.offline_reference(imgs, bank_dir)
        assert ref["mode"] == m.default_mode
        want = {n: np.asarray(ref[n]).reshape(len(imgs), -1) if n != "ANOMALY_MAP" else ref[n] for n in OUTPUTS}
        tu.assert_batch_independent(_infer(server.http_url, f"exdd_{product}", imgs), want)
    head_ref = tu.offline_reference(imgs, banks["head"])["SCORE"]
    topk_ref = tu.offline_reference(imgs, banks["topk"])["SCORE"]
    assert np.all(np.abs(head_ref - np.log(topk_ref)) > 1e-3)  # the fitted head, not its fallback


def test_the_tiny_build_stores_its_head_or_says_why_it_fell_back():
    m = read_manifest(tu.banks())
    head = m.scoring.head
    assert head is not None and m.scoring.topk > 0
    n = head.heldout["defective"]
    if head.fitted:
        assert head.features == HEAD_FEATURES and 0.0 <= head.cv_auroc <= 1.0 and head.crossfit >= 1
    else:
        assert head.features == ("log_dual_topk",) and f"{n} defective" in head.note
    assert "head" in m.thresholds and "dual_topk" in m.thresholds
