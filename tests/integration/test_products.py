"""Many products on one server: one shared exdd_features, per product its own scorer and ensemble (issue 21).

One `exdd serve` (explicit model control) on a repository of two products built by `exdd export
repository --product`: each product answers from its own banks (its offline scores within
SCORE_RTOL, different from the other's); `exdd deploy --product` swaps one product under load on
both, with no failed request, while the other keeps its version and its scores; the decision
metrics carry the product label; banks for other features and bad product names are refused,
naming what is wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import urllib.request

import numpy as np
import pytest
import triton_util as tu

from exdd.defaults import SCORE_RTOL
from exdd.serving.deploy import versions
from exdd.serving.products import ProductError, ProductModels, check_unique, parse_product, products_in
from exdd.serving.repository import RepositoryError, assemble_products
from exdd.serving.serve import free_port

pytestmark = pytest.mark.triton
OUTPUTS = ("SCORE", "SCORE_NEG", "SCORE_POS", "ANOMALY_MAP")
ALPHA, BETA = ProductModels("alpha"), ProductModels("beta")


def _tile_banks() -> str:
    """tu.banks() taught 3 generated tile surfaces: another product's banks, same extractor."""
    from exdd.offline.build import model_featurizer
    from exdd.offline.surfaces import generate
    from exdd.offline.update import normal_samples, update

    out = os.path.join(tu.workdir(), "banks-product-tile")
    if not os.path.isdir(out):
        root = os.path.join(tu.workdir(), "product-tile")
        generate(root, 3, 0, 2, 0, (160, 80), "tile", 7)
        model, info = tu.extractor()
        update(tu.banks(), out, normal_samples([os.path.join(root, "train")]), [], model_featurizer(model, info, 8))
    return out


def _alien_banks() -> str:
    """tu.banks() with a manifest claiming other weights: banks for another extractor."""
    alien = os.path.join(tu.workdir(), "banks-product-alien")
    if not os.path.isdir(alien):
        shutil.copytree(tu.banks(), alien)
        m = json.load(open(os.path.join(alien, "manifest.json")))
        m["features"]["weights"] = "random:1"
        json.dump(m, open(os.path.join(alien, "manifest.json"), "w"))
    return alien


def _probe_images() -> np.ndarray:
    """Two tile test surfaces (the taught texture) and two of the brushed test set."""
    from exdd.export.onnx_export import image_files, load_images

    _tile_banks()
    tiles = load_images(image_files(os.path.join(tu.workdir(), "product-tile", "test"), 2), tu.INPUT_HW)
    return np.ascontiguousarray(np.concatenate([tiles, tu.sample_images(2)]))


def _ref(images, bank_dir):
    r = tu.offline_reference(images, bank_dir)
    return {n: np.asarray(r[n]).reshape(len(images), -1) if n != "ANOMALY_MAP" else r[n] for n in OUTPUTS}


def _infer(url, model, images):
    import tritonclient.http as th

    with th.InferenceServerClient(url, network_timeout=120) as c:
        inp = th.InferInput("IMAGE", list(images.shape), "UINT8")
        inp.set_data_from_numpy(images)
        r = c.infer(model, [inp])
        return {n: r.as_numpy(n) for n in OUTPUTS}


def _metrics(port) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def _series(text: str, name: str, **labels) -> float:
    """Sum of the series of name carrying every label given; KeyError when there is none."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    if not found:
        raise KeyError(f"{name} {labels} not in /metrics")
    return total


@pytest.fixture(scope="module")
def served():
    """(repo, http url, grpc url, metrics port, serve's stderr lines) of `exdd serve` on a two-product repository."""
    repo = os.path.join(tu.workdir(), "repo-products")
    p = tu.exdd_cli(
        "export",
        "repository",
        "--onnx",
        tu.onnx_fp32(),
        "--product",
        f"alpha={tu.banks()}",
        "--product",
        f"beta={_tile_banks()}",
        "--out",
        repo,
        "--features-backend",
        "python",
        "--force",
    )
    assert p.returncode == 0, p.stderr
    assert "product alpha: exdd_alpha -> exdd_alpha_scorer" in p.stdout and "product beta:" in p.stdout
    tu.serving_env()
    ports = [free_port() for _ in range(3)]
    proc, lines = tu.start_serve_cli(
        repo, "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])
    )
    try:
        assert lines[-1].startswith("ready:"), "".join(lines[-20:])
        yield repo, f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}", ports[2], lines
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def test_repository_shares_the_extractor_and_routes_each_product_to_its_scorer(served):
    from exdd.serving.configs import protobuf

    repo, _, _, _, lines = served
    mc, text_format = protobuf()
    assert sorted(d for d in os.listdir(repo) if os.path.isdir(os.path.join(repo, d))) == [
        "exdd_alpha",
        "exdd_alpha_scorer",
        "exdd_beta",
        "exdd_beta_scorer",
        "exdd_features",
        "exdd_preprocess",
    ]
    assert products_in(repo) == [ALPHA, BETA]
    for pm in (ALPHA, BETA):
        ens = text_format.Parse(open(os.path.join(repo, pm.ensemble, "config.pbtxt")).read(), mc.ModelConfig())
        assert ens.name == pm.ensemble
        assert [s.model_name for s in ens.ensemble_scheduling.step] == ["exdd_preprocess", "exdd_features", pm.scorer]
        sc = text_format.Parse(open(os.path.join(repo, pm.scorer, "config.pbtxt")).read(), mc.ModelConfig())
        assert sc.name == pm.scorer and sc.parameters["product"].string_value == pm.product
    readme = open(os.path.join(repo, "README.md")).read()
    assert "Products: alpha, beta" in readme and "`exdd_beta_scorer`" in readme
    text = "".join(lines)
    assert "product alpha: send IMAGE or IMAGE_BYTES to exdd_alpha" in text
    assert "product beta: send IMAGE or IMAGE_BYTES to exdd_beta" in text


def test_each_product_answers_from_its_own_banks(served, tmp_path):
    from PIL import Image

    _, http, grpc, _, _ = served
    imgs = _probe_images()
    refs = {ALPHA: _ref(imgs, tu.banks()), BETA: _ref(imgs, _tile_banks())}
    # the two products' banks tell the probe images apart
    assert not np.allclose(refs[ALPHA]["SCORE"], refs[BETA]["SCORE"], rtol=10 * SCORE_RTOL)
    for pm, ref in refs.items():
        tu.assert_batch_independent(_infer(http, pm.ensemble, imgs), ref)
    # the client selects a product by name and reads that product's threshold
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(folder / f"{i}.png")
    out = tmp_path / "beta.jsonl"
    p = tu.exdd_cli("client", "score", str(folder), "--out", str(out), "--url", grpc, "--product", "beta")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(ln) for ln in open(out)]
    beta_thr = tu.offline_reference(imgs[:1], _tile_banks())["threshold"]
    for r in rows:
        want = float(refs[BETA]["SCORE"][int(os.path.basename(r["path"])[:-4]), 0])
        assert float(r["score"]) == pytest.approx(want, rel=SCORE_RTOL)
        assert float(r["threshold"]) == pytest.approx(beta_thr, rel=1e-6)
    # stream follows --product too, and bench's requests reach that product's scorer only
    p = tu.exdd_cli("client", "stream", "--source", str(folder), "--url", grpc, "--product", "alpha")
    assert p.returncode == 0, p.stderr
    frames = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert len(frames) == len(imgs)
    for f in frames:
        want = float(refs[ALPHA]["SCORE"][int(os.path.basename(f["frame"])[:-4]), 0])
        assert f["score"] == pytest.approx(want, rel=SCORE_RTOL)
    from exdd.client.connection import Connection

    c = Connection(http, "http")
    before = {pm: c.inference_count(pm.scorer) for pm in (ALPHA, BETA)}
    p = tu.exdd_cli(
        "client",
        "bench",
        "--url",
        grpc,
        "--product",
        "beta",
        "--batch-sizes",
        "1",
        "--concurrency",
        "1",
        "--requests",
        "3",
    )
    assert p.returncode == 0, p.stderr
    # 3 timed requests + 1 warm-up, one image each
    assert c.inference_count(BETA.scorer) - before[BETA] == 4 and c.inference_count(ALPHA.scorer) == before[ALPHA]
    c.close()
    # an unknown product: a clear error naming it, no traceback (the list of served models is not in it: `exdd
    # serve` keeps the repository index behind the model-control key, tests/test_serve_safety.py)
    p = tu.exdd_cli(
        "client", "score", str(folder), "--out", str(tmp_path / "x.jsonl"), "--url", grpc, "--product", "gamma"
    )
    assert p.returncode != 0 and "'exdd_gamma' not available" in p.stderr
    assert "Traceback" not in p.stderr
    p = tu.exdd_cli(
        "client", "score", str(folder), "--out", str(tmp_path / "y.jsonl"), "--url", grpc, "--product", "Bad Name"
    )
    assert p.returncode != 0 and "product name 'Bad Name'" in p.stderr and "Traceback" not in p.stderr


def test_deploy_to_one_product_leaves_the_other_untouched_under_load(served):
    repo, http, _, metrics_port, _ = served
    imgs = _probe_images()
    old_a, beta = _ref(imgs, tu.banks())["SCORE"], _ref(imgs, _tile_banks())["SCORE"]
    new_a = beta  # alpha is given the tile banks
    answers, errors, stop = [], [], threading.Event()

    def worker(pm):
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                answers.append((t0, pm, _infer(http, pm.ensemble, imgs)["SCORE"]))
            except Exception as e:
                errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(pm,)) for pm in (ALPHA, BETA, ALPHA)]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)
        p = tu.exdd_cli("deploy", _tile_banks(), "--repository", repo, "--product", "alpha", "--url", http)
        swapped = time.monotonic()
        time.sleep(3.0)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert p.returncode == 0, p.stderr
    assert "exdd_alpha_scorer: version 2 added (previous 1)" in p.stdout
    assert errors == [], errors[:3]
    assert versions(os.path.join(repo, ALPHA.scorer)) == [1, 2]
    assert versions(os.path.join(repo, BETA.scorer)) == [1]
    kinds = []
    for t0, pm, score in answers:
        if pm == BETA:
            np.testing.assert_allclose(score, beta, rtol=SCORE_RTOL)
            continue
        is_old, is_new = np.allclose(score, old_a, rtol=SCORE_RTOL), np.allclose(score, new_a, rtol=SCORE_RTOL)
        assert is_old or is_new, f"alpha answered {score.ravel()}: neither its old nor its new banks"
        kinds.append((t0, "old" if is_old else "new"))
    assert any(k == "old" for _, k in kinds) and any(k == "new" for _, k in kinds)
    assert all(k == "new" for t0, k in kinds if t0 > swapped)
    assert sum(pm == BETA for _, pm, _ in answers) > 0
    import tritonclient.http as th

    with th.InferenceServerClient(http) as c:
        assert c.is_model_ready(BETA.scorer, "1") and c.is_model_ready(ALPHA.scorer, "2")
        assert not c.is_model_ready(ALPHA.scorer, "1")
    rec = json.load(open(os.path.join(repo, ALPHA.scorer, "2", "deploy.json")))
    assert rec["model"] == ALPHA.scorer and rec["product"] == "alpha"

    # decision metrics: labelled by product and model; exact deltas for a known set of requests
    before = _metrics(metrics_port)
    _infer(http, ALPHA.ensemble, imgs)
    _infer(http, BETA.ensemble, imgs[:3])
    after = _metrics(metrics_port)
    for pm, n, version in ((ALPHA, 4, 2), (BETA, 3, 1)):
        labels = {"product": pm.product, "model": pm.scorer, "version": version}
        assert (
            _series(after, "exdd_images_scored_total", **labels) - _series(before, "exdd_images_scored_total", **labels)
            == n
        )
        assert _series(after, "exdd_score_count", **labels) - _series(before, "exdd_score_count", **labels) == n
    assert 'product="default"' not in after


def test_banks_for_other_features_are_refused_at_assembly_and_deploy(served, tmp_path):
    repo, http, _, _, _ = served
    alien = _alien_banks()
    out = tmp_path / "repo"
    p = tu.exdd_cli(
        "export",
        "repository",
        "--onnx",
        tu.onnx_fp32(),
        "--product",
        f"good={tu.banks()}",
        "--product",
        f"odd={alien}",
        "--out",
        str(out),
    )
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert f"product 'odd': banks {alien}" in p.stderr and "weights: bank has 'random:1'" in p.stderr
    assert not out.exists()
    p = tu.exdd_cli("deploy", alien, "--repository", repo, "--product", "beta", "--url", http)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert (
        "refused" in p.stderr
        and "product 'beta'" in p.stderr
        and "the shared extractor (exdd_features/1)" in p.stderr
        and "weights: bank has 'random:1'" in p.stderr
    )
    assert versions(os.path.join(repo, BETA.scorer)) == [1]
    # an unknown product, or none in a repository of several: an error listing the products
    p = tu.exdd_cli("deploy", tu.banks(), "--repository", repo, "--product", "gamma")
    assert p.returncode != 0 and "no product 'gamma' (it serves: alpha, beta)" in p.stderr
    p = tu.exdd_cli("deploy", tu.banks(), "--repository", repo)
    assert p.returncode != 0 and "serves several products: give --product (one of alpha, beta)" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize(
    "value, message",
    [
        ("Alpha={banks}", "product name 'Alpha'"),
        ("features={banks}", "product name 'features' is reserved"),
        ("preprocess={banks}", "product name 'preprocess' is reserved"),
        ("x_scorer={banks}", "ends with '_scorer'"),
        ("={banks}", "product name ''"),
        ("alpha", "expected NAME=BANKS"),
    ],
)
def test_bad_product_names_are_refused_naming_them(value, message, tmp_path):
    v = value.format(banks=tu.banks())
    with pytest.raises(ProductError, match=message.replace("(", r"\(")):
        check_unique([parse_product(v)[0]])
    with pytest.raises(ProductError, match="'a' is given twice"):
        check_unique(["a", "b", "a"])


def test_cli_refuses_bad_names_duplicates_and_mixing(tmp_path):
    out = str(tmp_path / "r")
    onnx, banks = tu.onnx_fp32(), tu.banks()
    for args, want in [
        (["--product", f"Line3={banks}"], "product name 'Line3'"),
        (["--product", f"a={banks}", "--product", f"a={banks}"], "--product 'a' is given twice"),
        (["--product", f"a={banks}", "--banks", banks], "not both"),
        (["--product", "a=/nonexistent/banks"], "/nonexistent/banks is not a directory"),
        (["--product", f"a={banks}", "--product", f"b={banks}", "--threshold", "1"], "--threshold sets one threshold"),
    ]:
        p = tu.exdd_cli("export", "repository", "--onnx", onnx, "--out", out, *args)
        assert p.returncode != 0 and want in p.stderr and "Traceback" not in p.stderr, (args, p.stderr[-400:])
        assert not os.path.exists(out)
    with pytest.raises(RepositoryError, match="either one default product or named products"):
        assemble_products(onnx, {None: banks, "a": banks}, out)
