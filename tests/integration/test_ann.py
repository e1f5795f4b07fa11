"""Searchers of the scorer: exact vs faiss HNSW, the index built at export time, checksummed, served by Triton."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

import triton_util as tu  # noqa: E402

from exdd.defaults import SCORE_RTOL  # noqa: E402
from exdd.serving.ann_index import add_index  # noqa: E402
from exdd.serving.configs import Serving  # noqa: E402
from exdd.serving.repository import RepositoryError, assemble  # noqa: E402
from exdd_scoring import BankError, Scorer, load_banks  # noqa: E402
from exdd_scoring.ann import ExactSearcher, HnswSearcher, searchers_from_manifest  # noqa: E402
from exdd_scoring.knn import nearest  # noqa: E402


def clustered(n, d, seed, centers=40):
    """Points around a few centres, like patch features (not uniform noise, on which any index is slow)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32) * 3
    return (c[rng.integers(0, centers, n)] + rng.standard_normal((n, d)).astype(np.float32)).astype(np.float32)


def test_hnsw_finds_the_exact_nearest_distance_for_at_least_99_percent_of_queries():
    bank, q = clustered(5000, 32, 0), clustered(2000, 32, 1)
    ref_d, ref_i = ExactSearcher(bank).nearest(q)
    d, i = HnswSearcher.build(bank, ef_search=128).nearest(q)
    assert d.dtype == np.float32 and i.dtype == np.int64 and d.shape == i.shape == (2000,)
    hit = np.isclose(d, ref_d, rtol=1e-4, atol=1e-4)
    assert hit.mean() >= 0.99
    # the distance returned is the true distance to the row returned, so a miss is only ever larger
    np.testing.assert_allclose(d, np.linalg.norm(q - bank[i], axis=1), rtol=1e-4, atol=1e-4)
    assert (d >= ref_d - 1e-4).all()


def test_exact_searcher_is_knn_nearest():
    bank, q = clustered(300, 8, 2), clustered(50, 8, 3)
    a = ExactSearcher(bank).nearest(q)
    b = nearest(q, bank, np)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0])


def with_index_file(manifest, name, **changes):
    """The manifest with its index entry of bank name changed (the manifest is frozen: a new one)."""
    files = dict(manifest.index.files, **{name: replace(manifest.index.files[name], **changes)})
    return replace(manifest, index=replace(manifest.index, files=files))


@pytest.fixture(scope="module")
def indexed_banks(tmp_path_factory):
    """A copy of the tiny banks with an hnsw index on every bank."""
    dst = str(tmp_path_factory.mktemp("ann") / "banks")
    shutil.copytree(tu.banks(), dst)
    entry = add_index(dst, "hnsw", min_size=1)
    assert set(entry.files) == {"negative", "positive"}
    return dst


def test_index_is_checksummed_in_the_manifest_and_scores_equal_exact(indexed_banks):
    with open(os.path.join(indexed_banks, "manifest.json")) as f:
        manifest = json.load(f)
    neg = manifest["index"]["files"]["negative"]
    assert manifest["index"]["kind"] == "hnsw" and len(neg["sha256"]) == 64
    assert neg["vectors_sha256"] == manifest["files"]["negative.npy"]["sha256"]
    with open(os.path.join(indexed_banks, neg["file"]), "rb") as f:
        assert not f.read(2).startswith(b"\x80")  # not a pickle
    banks = load_banks(indexed_banks)
    searchers = searchers_from_manifest(indexed_banks, banks.manifest)
    assert {k: s.kind for k, s in searchers.items()} == {"negative": "hnsw", "positive": "hnsw"}
    import torch

    with torch.no_grad():
        feats = tu.extractor()[0](torch.from_numpy(tu.sample_images(3))).numpy()
    exact = Scorer(banks).score(feats)
    approx = Scorer(banks, searchers=searchers).score(feats)
    for m in exact.scores:
        np.testing.assert_allclose(approx.scores[m], exact.scores[m], rtol=SCORE_RTOL)
    # patch distances as maps are promised: within SCORE_RTOL of the largest (the exact search expands
    # |a|^2 + |b|^2 - 2ab, whose rounding on a small distance is ~1e-4 of it on some CPUs; HNSW subtracts directly)
    peak = float(exact.patch_neg.max())
    np.testing.assert_allclose(approx.patch_neg, exact.patch_neg, rtol=SCORE_RTOL, atol=SCORE_RTOL * peak)


def test_ef_search_grows_with_the_bank_and_is_recorded_and_used_per_file(indexed_banks):
    from exdd_scoring.ann import LARGE_BANK, ef_search_for

    assert ef_search_for(LARGE_BANK - 1) == 64 and ef_search_for(LARGE_BANK) == ef_search_for(100_000) == 128
    assert ef_search_for(100_000, {"ef_search": 40}) == 40  # an explicit choice wins
    manifest = load_banks(indexed_banks).manifest
    for name, f in manifest.index.files.items():
        assert f.ef_search == ef_search_for(f.size)
    manifest = with_index_file(manifest, "negative", ef_search=17)  # what the file records is what is searched with
    assert searchers_from_manifest(indexed_banks, manifest)["negative"].index.hnsw.efSearch == 17


def test_gpu_array_module_or_exact_manifest_gives_no_searchers(indexed_banks):
    banks = load_banks(indexed_banks)
    assert searchers_from_manifest(indexed_banks, banks.manifest, xp=object()) == {}
    assert searchers_from_manifest(tu.banks(), load_banks(tu.banks()).manifest) == {}


def test_small_banks_stay_exact(tmp_path):
    dst = str(tmp_path / "banks")
    shutil.copytree(tu.banks(), dst)
    entry = add_index(dst, "hnsw", min_size=10**9)
    assert entry.files == {} and not [f for f in os.listdir(dst) if f.endswith(".hnsw")]


def test_tampered_or_mismatched_index_is_refused(indexed_banks, tmp_path):
    dst = str(tmp_path / "banks")
    shutil.copytree(indexed_banks, dst)
    manifest = load_banks(dst).manifest
    path = os.path.join(dst, "negative.hnsw")
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(BankError, match="sha256 differs"):
        searchers_from_manifest(dst, manifest)
    shutil.copy2(os.path.join(dst, "positive.hnsw"), path)  # another bank's index, with its checksum
    manifest = with_index_file(manifest, "negative", sha256=manifest.index.files["positive"].sha256)
    with pytest.raises(BankError, match="index holds"):
        searchers_from_manifest(dst, manifest)
    manifest = with_index_file(manifest, "negative", vectors_sha256="0" * 64)
    with pytest.raises(BankError, match="other negative vectors"):
        searchers_from_manifest(dst, manifest)
    manifest = with_index_file(manifest, "negative", file="../negative.hnsw")
    with pytest.raises(BankError, match="not a bank index file"):
        searchers_from_manifest(dst, manifest)


def test_repository_with_hnsw_index_and_the_cli_option():
    out = os.path.join(tu.workdir(), "repo-hnsw-cli")
    p = tu.exdd_cli(
        "export",
        "repository",
        "--onnx",
        tu.onnx_fp32(),
        "--banks",
        tu.banks(),
        "--out",
        out,
        "--index",
        "hnsw",
        "--index-min-size",
        "1",
        "--features-backend",
        "python",
    )
    assert p.returncode == 0, p.stderr
    assert "index hnsw" in p.stdout and "negative.hnsw" in p.stderr
    banks_dir = os.path.join(out, "exdd_scorer", "1", "banks")
    assert {"negative.hnsw", "positive.hnsw", "manifest.json"} <= set(os.listdir(banks_dir))
    # the source bank directory is untouched
    assert "index" not in json.load(open(os.path.join(tu.banks(), "manifest.json")))
    with pytest.raises(RepositoryError, match="index 'ivf'"):
        assemble(
            tu.onnx_fp32(), tu.banks(), os.path.join(tu.workdir(), "repo-bad-index"), "python", Serving(), index="ivf"
        )


def _serve_venv_has_faiss() -> bool:
    env = tu.serving_env()
    py = os.path.join(os.environ.get("EXDD_SERVE_VENV", ""), "bin", "python")
    if not os.path.isfile(py):
        return False
    return subprocess.run([py, "-c", "import faiss"], capture_output=True, env=env.environ()).returncode == 0


@pytest.mark.triton
def test_triton_serves_the_hnsw_repository_with_the_exact_scores():
    if not _serve_venv_has_faiss():
        pytest.skip("faiss-cpu is not installed in the serving venv ($EXDD_SERVE_VENV)")
    repo = assemble(
        tu.onnx_fp32(),
        tu.banks(),
        os.path.join(tu.workdir(), "repo-hnsw"),
        "python",
        Serving("cpu", 1, 8, 5000),
        index="hnsw",
        index_min_size=1,
    ).path
    images = tu.sample_images(3)
    ref = tu.offline_reference(images, tu.banks())
    server = tu.start_server(repo)
    try:
        import tritonclient.http as http

        c = http.InferenceServerClient(server.http_url)
        inp = http.InferInput("IMAGE", list(images.shape), "UINT8")
        inp.set_data_from_numpy(images)
        r = c.infer("exdd", [inp])
        np.testing.assert_allclose(r.as_numpy("SCORE")[:, 0], ref["SCORE"], rtol=1e-4)
    finally:
        server.stop()
