"""The fitted projection (issue 25): fitted on the normal training patches at build time, stored in the bank
folder, baked into the exported ONNX, refused with any other extractor, kept by update, served."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
import triton_util as tu

from exdd.offline.build import BuildConfig, plan
from exdd.offline.features import make_projection, projection_sha256, with_projection
from exdd.offline.projection import fit_projection, fit_samples, normal_covariance, pca_projection
from exdd_scoring import BankError, FeatureSpec, Scorer, load_banks, load_projection, read_manifest
from exdd_scoring.onnx_metadata import read_features


@pytest.fixture(scope="module")
def pca_banks():
    return tu.pca_banks()


@pytest.fixture(scope="module")
def fit():
    """(torch extractor, the build's normal training samples, their covariance) of the tiny configuration."""
    model, _ = tu.extractor()
    normals = plan(tu.dataset(), BuildConfig()).normals
    cov, seen, errors = normal_covariance(model, fit_samples(normals))
    assert seen == len(normals) and not errors
    return model, normals, cov


@pytest.fixture(scope="module")
def other_pca(fit):
    """A pca projection of other images (the first 3 normals only) and its extractor's features."""
    model, normals, _ = fit
    other = fit_projection("pca", model, normals[:3], tu.D)
    return other, with_projection(model.backbone, tu.extractor()[1]["weights"], tu.INPUT_HW, other, "pca")[1]


def test_pca_is_the_top_eigenvectors_largest_first_with_fixed_signs():
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    lam = np.linspace(10.0, 1.0, 40)
    p = pca_projection((u * lam) @ u.T, 5)
    assert p.shape == (40, 5) and p.dtype == np.float32
    np.testing.assert_allclose(np.abs(p), np.abs(u[:, :5]), atol=1e-5)  # the top 5, largest first
    big = np.argmax(np.abs(p), axis=0)
    assert (p[big, np.arange(5)] > 0).all()  # signs fixed: a reproducible hash
    np.testing.assert_array_equal(pca_projection((u * lam) @ u.T, 5), p)
    with pytest.raises(ValueError, match="1..40"):
        pca_projection(np.eye(40), 41)


def test_the_built_projection_is_orthonormal_and_keeps_more_variance_than_random(fit, pca_banks):
    _, _, cov = fit
    p = load_projection(pca_banks).astype(np.float64)
    assert p.shape == (1536, tu.D)
    np.testing.assert_allclose(p.T @ p, np.eye(tu.D), atol=1e-5)
    kept = p.T @ cov @ p  # eigenvectors: diagonal, descending
    var = np.diag(kept)
    assert np.abs(kept - np.diag(var)).max() < 1e-4 * var[0] and (np.diff(var) <= 1e-6 * var[0]).all()
    r = make_projection(tu.D, 0).astype(np.float64)  # unit columns, nearly orthogonal
    assert var.sum() > 5 * np.trace(r.T @ cov @ r)


def test_the_fit_depends_on_the_images_only_and_the_build_stored_it(fit, pca_banks, other_pca):
    """Fitted again here (other global seeds, another run, the images in another order) it is the same bytes as
    the build's (built with --projection-seed 5); other images give another matrix. The bank holds it as
    projection.npy, listed with its checksum, hashed in the features."""
    model, normals, _ = fit
    np.random.seed(123)
    torch.manual_seed(123)
    again = fit_projection("pca", model, list(reversed(normals)), tu.D)
    stored = load_projection(pca_banks)
    np.testing.assert_array_equal(again, stored)
    m = read_manifest(pca_banks)
    assert m.features.projection == "pca" and m.features.projection_seed == 0
    assert m.features.projection_sha256 == projection_sha256(stored)
    assert m.files["projection.npy"].shape == (1536, tu.D)
    assert projection_sha256(other_pca[0]) != m.features.projection_sha256


def test_a_bank_and_an_extractor_with_other_projections_are_refused(fit, pca_banks, other_pca):
    _, random_info = tu.extractor()
    with pytest.raises(BankError, match=r"projection: bank has 'pca', features have 'random'; projection_sha256"):
        load_banks(pca_banks, expected_features=random_info)
    with pytest.raises(BankError) as e:
        load_banks(pca_banks, expected_features=other_pca[1])  # pca of other images
    msg = str(e.value)
    assert "projection_sha256: bank has" in msg and "projection: bank has" not in msg  # same kind, other matrix
    assert "export onnx --banks DIR" in msg
    with pytest.raises(BankError, match="projection: bank has 'random', features have 'pca'"):
        load_banks(tu.banks(), expected_features=other_pca[1])
    own = with_projection(fit[0].backbone, tu.WEIGHTS, tu.INPUT_HW, load_projection(pca_banks), "pca")[1]
    assert load_banks(pca_banks, expected_features=own)


def test_a_missing_or_altered_projection_file_is_refused(pca_banks, tmp_path):
    altered = tmp_path / "altered"
    shutil.copytree(pca_banks, altered)
    p = np.load(altered / "projection.npy")
    p[0, 0] += 1.0
    np.save(altered / "projection.npy", p)
    with pytest.raises(BankError, match="projection.npy: checksum mismatch"):
        load_projection(str(altered))
    unlisted = tmp_path / "unlisted"
    shutil.copytree(pca_banks, unlisted)
    m = json.loads((unlisted / "manifest.json").read_text())
    del m["files"]["projection.npy"]
    (unlisted / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BankError, match="lists no projection.npy: rebuild .* --projection pca"):
        load_projection(str(unlisted))
    assert load_projection(tu.banks()) is None  # random: made again from its seed


def test_export_bakes_the_bank_projection_in_and_passes_parity(pca_banks):
    out = os.path.join(tu.workdir(), "pca.onnx")
    p = tu.exdd_cli(
        "export", "onnx", "--banks", pca_banks, "--out", out, "--parity-images", tu.dataset(), "--parity-count", "2"
    )
    assert p.returncode == 0, p.stderr
    assert "parity fp32: ok on 2 images" in p.stdout  # ONNX Runtime vs torch, the usual tolerance
    stored = FeatureSpec.from_dict(read_features(out))
    assert stored.projection == "pca" and stored.matches(read_manifest(pca_banks).features)


def test_evaluate_and_update_use_the_bank_projection(pca_banks, tmp_path):
    p = tu.exdd_cli("offline", "evaluate", tu.dataset(), "--banks", pca_banks, "--no-pixel")
    assert p.returncode == 0, p.stderr
    out = tmp_path / "updated"
    from exdd.datasets import load_split

    normal = next(s.path for s in load_split(tu.dataset(), "test") if s.label == 0)
    p = tu.exdd_cli("offline", "update", pca_banks, "--out", str(out), "--normal", normal)
    assert p.returncode == 0, p.stderr
    assert read_manifest(str(out)).features == read_manifest(pca_banks).features
    np.testing.assert_array_equal(load_projection(str(out)), load_projection(pca_banks))


@pytest.mark.triton
def test_a_repository_of_pca_banks_serves_the_offline_scores(fit, pca_banks):
    import tritonclient.http as th

    from exdd.serving.configs import Serving
    from exdd.serving.repository import assemble

    onnx = os.path.join(tu.workdir(), "pca.onnx")
    if not os.path.isfile(onnx):
        test_export_bakes_the_bank_projection_in_and_passes_parity(pca_banks)
    repo = assemble(onnx, pca_banks, os.path.join(tu.workdir(), "repo-pca"), "python", Serving("cpu", 1, 8, 5000)).path
    images = tu.sample_images(3)
    model, info = with_projection(fit[0].backbone, tu.WEIGHTS, tu.INPUT_HW, load_projection(pca_banks), "pca")
    scorer = Scorer(load_banks(pca_banks, expected_features=info))
    with torch.no_grad():
        want = scorer.score(model(torch.from_numpy(images)).numpy(), map_modes=()).scores[scorer.default_mode]
    srv = tu.start_server(repo)
    try:
        with th.InferenceServerClient(srv.http_url) as c:
            inp = th.InferInput("IMAGE", list(images.shape), "UINT8")
            inp.set_data_from_numpy(images)
            got = c.infer("exdd", [inp]).as_numpy("SCORE")[:, 0]
    finally:
        srv.stop()
    np.testing.assert_allclose(got, want, rtol=tu.SCORE_RTOL, atol=tu.SCORE_RTOL * 1e-3)
