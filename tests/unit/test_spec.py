"""FeatureSpec: the typed features fingerprint (round trip, validation, matching)."""

import pytest

from exdd_scoring import FeatureSpec, SpecError
from exdd_scoring.bank import BankError, check_features

BASE = {
    "backbone": "wide_resnet50_2",
    "weights": "random:0",
    "input_size": [632, 224],
    "layers": ["layer2", "layer3"],
    "grid": [79, 28],
    "projection_seed": 0,
    "projection_sha256": "ab" * 32,
    "d": 256,
    "aggregation": "avg",
}


def test_round_trip_and_frozen():
    s = FeatureSpec.from_dict(BASE)
    assert s.input_size == (632, 224) and s.layers == ("layer2", "layer3") and s.features_shape == (79, 28, 256)
    assert s.to_dict() == {**BASE, "projection": "random"} and FeatureSpec.from_json(s.to_json()) == s
    with pytest.raises(Exception):
        s.d = 3
    assert FeatureSpec.from_dict({**BASE, "future_key": 1}) == s  # unknown keys are ignored


@pytest.mark.parametrize(
    "key,value,msg",
    [
        ("d", 0, "d must be an integer >= 1"),
        ("d", "256", "d must be"),
        ("input_size", [632], "two positive integers"),
        ("grid", [700, 28], "larger than the input size"),
        ("weights", "", "non-empty string"),
        ("layers", "layer2", "layer names"),
        ("projection_seed", True, "projection_seed"),
    ],
)
def test_validation_names_the_field(key, value, msg):
    with pytest.raises(SpecError, match=msg):
        FeatureSpec.from_dict({**BASE, key: value}, "manifest.json")


def test_missing_keys_and_matching():
    with pytest.raises(SpecError, match="manifest.json: missing d"):
        FeatureSpec.from_dict({k: v for k, v in BASE.items() if k != "d"}, "manifest.json")
    a = FeatureSpec.from_dict(BASE)
    b = FeatureSpec.from_dict({**BASE, "projection_seed": 7, "weights_source": "/x.safetensors"})
    assert a.mismatches(b) == ["projection_seed: 0 vs 7"] and not a.matches(b)
    assert a.matches(FeatureSpec.from_dict({**BASE, "weights_source": "elsewhere", "aggregation": ""}))
    with pytest.raises(BankError, match="projection_seed: bank has 0, features have 7"):
        check_features(a, b, "here")


def test_a_fingerprint_without_projection_kind_is_random_and_the_kind_is_part_of_the_identity():
    """Every fingerprint written before fitted projections (issue 25) names none: it reads as 'random'. A fitted one
    differs in kind and matrix hash, and the refusal names both and says which extractor to use."""
    old = FeatureSpec.from_dict(BASE)
    assert old.projection == "random" and old.matches(FeatureSpec.from_dict({**BASE, "projection": "random"}))
    pca = FeatureSpec.from_dict({**BASE, "projection": "pca", "projection_sha256": "cd" * 32})
    assert pca.mismatches(old) == [
        "projection: 'pca' vs 'random'",
        f"projection_sha256: {'cd' * 32!r} vs {'ab' * 32!r}",
    ]
    with pytest.raises(BankError, match=r"projection: bank has 'pca', features have 'random'.*export onnx --banks"):
        check_features(pca, BASE, "here")  # an old whole dict: random
    with pytest.raises(SpecError, match="projection must be a non-empty string"):
        FeatureSpec.from_dict({**BASE, "projection": ""})
