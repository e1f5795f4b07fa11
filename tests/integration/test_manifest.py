"""BankManifest: the typed manifest.json of a bank directory, round trip, old manifests, wrong fields named."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import pytest
import triton_util as tu

from exdd_scoring import MANIFEST_VERSION, BankError, BankManifest, ManifestError, Scorer, load_banks, read_manifest
from exdd_scoring.manifest import Thresholds
from exdd_scoring.provenance import OfflineManifest


def manifest_json() -> dict:
    with open(os.path.join(tu.banks(), "manifest.json")) as f:
        return json.load(f)


def edited_banks(dest, edit) -> str:
    """A copy of the tiny banks whose manifest.json went through edit(dict) (in place)."""
    shutil.copytree(tu.banks(), dest)
    path = os.path.join(dest, "manifest.json")
    m = json.load(open(path))
    edit(m)
    json.dump(m, open(path, "w"), indent=2)
    return str(dest)


def test_a_built_manifest_reads_as_attributes_and_round_trips_to_the_same_json():
    raw = manifest_json()
    assert raw["version"] == MANIFEST_VERSION
    m = read_manifest(tu.banks())
    assert m.version == MANIFEST_VERSION and m.k == raw["k"] and m.default_mode == raw["default_mode"]
    assert m.features.d == raw["features"]["d"] and m.coreset == raw["coreset"]  # provenance: a JSON object here
    assert m.thresholds == raw["threshold"]["values"] and m.thresholds.get("nope") is None
    assert m.files["negative.npy"].sha256 == raw["files"]["negative.npy"]["sha256"]
    assert m.to_dict() == raw  # same keys and values as on disk
    assert BankManifest.from_json(m.to_json(), "again") == m
    o = read_manifest(tu.banks(), OfflineManifest)  # the offline side: provenance typed
    assert o.coreset.negative.size == raw["coreset"]["negative"]["size"]
    assert o.sources.dataset == raw["sources"]["dataset"] and o.updates == ()
    assert o.to_dict() == raw and o.to_json() == m.to_json() and OfflineManifest.from_dict(m) == o
    with pytest.raises(Exception):
        m.k = 5  # frozen: evolve with dataclasses.replace
    assert replace(m, k=5).k == 5 and m.k == raw["k"]


def test_an_old_manifest_without_version_loads_with_the_documented_defaults(tmp_path):
    def old(m):  # as written before the typed manifest, and before 2026-11-29 (no scoring section)
        del m["version"], m["scoring"]

    banks = load_banks(edited_banks(tmp_path / "old", old))
    assert banks.manifest.version == 0
    assert banks.manifest.scoring.gamma == 1.0 and banks.manifest.scoring.fusion is None
    s = Scorer(banks)
    assert {k: s.params[k] for k in ("gamma", "fusion")} == {"gamma": 1.0, "fusion": None}
    assert s.default_mode == manifest_json()["default_mode"]
    assert banks.manifest.to_dict()["version"] == MANIFEST_VERSION  # written again: the current schema


def test_features_without_a_projection_kind_load_as_random_and_a_fitted_kind_needs_its_file(tmp_path):
    """Manifests written before fitted projections (issue 25) name no projection kind: random, as they were."""
    from exdd_scoring import load_projection

    banks = load_banks(
        edited_banks(tmp_path / "old", lambda m: m["features"].pop("projection")), expected_features=tu.extractor()[1]
    )
    assert banks.manifest.features.projection == "random" and load_projection(str(tmp_path / "old")) is None

    def claim_pca(m):
        m["features"]["projection"] = "pca"

    with pytest.raises(BankError, match="fitted projection .'pca'. but the bank lists no projection.npy"):
        load_projection(edited_banks(tmp_path / "pca", claim_pca))


def test_a_version_1_manifest_without_topk_or_head_loads_with_their_defaults(tmp_path):
    """Before issue 25 (version 1) scoring had no topk and no head: TOPK_FRACTION and the head's fixed fallback."""
    import numpy as np

    from exdd_scoring.scores import TOPK_FRACTION

    def v1(m):
        m["version"] = 1
        m["scoring"].pop("topk", None)
        m["scoring"].pop("head", None)

    banks = load_banks(edited_banks(tmp_path / "v1", v1))
    assert banks.manifest.version == 1
    assert banks.manifest.scoring.topk == TOPK_FRACTION and banks.manifest.scoring.head is None
    s = Scorer(banks)
    assert s.params["topk"] == TOPK_FRACTION and s.params["head"] is None
    rng = np.random.default_rng(0)
    r = s.score(rng.standard_normal((2,) + tuple(s.grid) + (s.d,)).astype(np.float32), modes=("head", "dual_topk"))
    np.testing.assert_allclose(r.scores["head"], np.log(r.scores["dual_topk"]), rtol=1e-5)  # the fallback
    assert banks.manifest.to_dict()["scoring"]["topk"] == TOPK_FRACTION


def test_an_uncalibrated_manifest_has_no_thresholds(tmp_path):
    banks = load_banks(edited_banks(tmp_path / "u", lambda m: m.pop("threshold")))
    assert banks.manifest.threshold == Thresholds() and Scorer(banks).thresholds == {}


@pytest.mark.parametrize(
    "edit, field",
    [
        (
            lambda m: m["threshold"]["values"].__setitem__("dual", "0.5"),
            "threshold.values.dual must be a finite number",
        ),
        (lambda m: m.__setitem__("k", "3"), "k = '3'"),
        (lambda m: m["coreset"]["negative"].__setitem__("size", 1.5), "coreset.negative.size must be an integer"),
        (lambda m: m["scoring"].__setitem__("gamma", None), "scoring.gamma must be a finite number"),
        (lambda m: m.__setitem__("default_mode", "exdd_peak"), "default_mode: unknown scoring mode 'exdd_peak'"),
        (lambda m: m["sources"].__setitem__("normal_images", "4"), "sources.normal_images must be an integer"),
        (
            lambda m: m["files"]["negative.npy"].__setitem__("shape", "50x16"),
            "files.negative.npy.shape must be a JSON list",
        ),
        (lambda m: m.__setitem__("treshold", {}), "unknown key(s) 'treshold'"),
        (lambda m: m["threshold"].__setitem__("value", {}), "threshold: unknown key(s) 'value'"),
        (lambda m: m["scoring"].__setitem__("topk", 1.5), "scoring.topk must be a fraction in (0, 1]"),
        (
            lambda m: m["scoring"].__setitem__(
                "head", {"mean": [0.0], "scale": [1.0], "coef": [1.0], "intercept": 0.0, "cv_auroc": "high"}
            ),
            "scoring.head.cv_auroc must be a number",
        ),
    ],
)
def test_a_wrong_field_is_refused_naming_the_file_and_the_field(tmp_path, edit, field):
    """By the served reader, and by the offline one (which also types the provenance: coreset, sources)."""
    bad = edited_banks(tmp_path / "bad", edit)
    for kind in (OfflineManifest,) + (() if field.startswith(("coreset", "sources")) else (BankManifest,)):
        with pytest.raises(ManifestError) as e:
            load_banks(bad, manifest_cls=kind)
        assert field in str(e.value) and os.path.join(bad, "manifest.json") in str(e.value)
        assert isinstance(e.value, BankError)


def test_the_served_reader_keeps_provenance_as_json_objects_and_refuses_anything_else(tmp_path):
    banks = load_banks(edited_banks(tmp_path / "p", lambda m: m["sources"].__setitem__("normal_images", "4")))
    assert banks.manifest.sources["normal_images"] == "4"  # never read by a served scorer
    with pytest.raises(ManifestError, match="coreset must be a JSON object"):
        load_banks(edited_banks(tmp_path / "q", lambda m: m.__setitem__("coreset", [1])))
    with pytest.raises(ManifestError, match=r"updates\[0\] must be a JSON object"):
        load_banks(edited_banks(tmp_path / "r", lambda m: m.__setitem__("updates", ["x"])))


def test_a_newer_version_is_refused_saying_what_to_do(tmp_path):
    def newer(m):
        m["version"] = MANIFEST_VERSION + 1
        m["a_later_field"] = 1

    with pytest.raises(
        ManifestError,
        match=f"manifest version {MANIFEST_VERSION + 1} was written by a newer exdd.*"
        "upgrade exdd, or rebuild the banks with `exdd offline build",
    ):
        load_banks(edited_banks(tmp_path / "new", newer))
    with pytest.raises(ManifestError, match="version must be an integer"):
        BankManifest.from_dict({**manifest_json(), "version": "1"}, "m.json")


def test_not_json_or_not_an_object_is_named():
    with pytest.raises(ManifestError, match="m.json: not JSON"):
        BankManifest.from_json("{", "m.json")
    with pytest.raises(ManifestError, match="m.json: expected a JSON object"):
        BankManifest.from_json("[1]", "m.json")
    with pytest.raises(ManifestError, match="m.json: missing 'k'"):
        BankManifest.from_dict({"features": manifest_json()["features"]}, "m.json")


def test_export_repository_refuses_a_threshold_that_is_not_a_number(tmp_path):
    """Before the typed manifest this assembled a repository with no threshold, without a word."""
    bad = edited_banks(tmp_path / "banks", lambda m: m["threshold"]["values"].__setitem__("dual", "high"))
    out = tmp_path / "repo"
    p = tu.exdd_cli(
        "export",
        "repository",
        "--onnx",
        tu.onnx_fp32(),
        "--banks",
        bad,
        "--out",
        str(out),
        "--features-backend",
        "python",
    )
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "threshold.values.dual must be a finite number, got 'high'" in p.stderr
    assert not out.exists()


def test_a_served_scorer_never_imports_the_provenance_module():
    """What a Triton scorer runs (load_banks + Scorer) reads no provenance: exdd_scoring/provenance.py stays offline."""
    import subprocess
    import sys

    code = (
        "import sys, exdd_scoring as s; s.Scorer(s.load_banks(sys.argv[1])); "
        "assert 'exdd_scoring.provenance' not in sys.modules, 'provenance imported'"
    )
    p = subprocess.run([sys.executable, "-c", code, tu.banks()], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
