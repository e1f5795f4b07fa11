"""Extension points are registries and the CLI's choices come from them (layouts, features backends, synthesis)."""

import pytest

from exdd.datasets import (
    LAYOUTS,
    DatasetError,
    Layout,
    Sample,
    detect_layout,
    layout_choices,
    load_split,
    register_layout,
)


def _choices(command, option):
    return next(p for p in command.params if p.name == option).type.choices


def test_a_registered_layout_is_detected_loaded_and_offered(tmp_path):
    root = tmp_path / "lines"
    (root / "line_a").mkdir(parents=True)
    (root / "MANIFEST.lines").write_text("x")
    lay = register_layout(
        Layout(
            "lines",
            lambda r, split: [Sample(str(root / "line_a"), None, -1, split)],
            lambda r: (tmp_path / "lines" / "MANIFEST.lines").exists() and str(r) == str(root),
        )
    )
    try:
        LAYOUTS["folder"] = LAYOUTS.pop("folder")  # keep the catch-all last
        assert detect_layout(str(root)) == "lines" and load_split(str(root), "test")[0].split == "test"
        assert "lines" in layout_choices(labelled_only=True)
        with pytest.raises(ValueError, match="already registered"):
            register_layout(lay)
    finally:
        del LAYOUTS["lines"]
    with pytest.raises(DatasetError, match="unknown layout 'nope'"):
        load_split(str(root), "test", "nope")


def test_cli_choices_come_from_the_registries():
    from exdd.offline.cli import build, evaluate
    from exdd.offline.synth.methods import SYNTH_METHODS
    from exdd.offline.synth_cli import synth
    from exdd.serving.cli import repository_cmd
    from exdd.serving.registry import FEATURES_BACKENDS
    from exdd_scoring import MODES

    assert list(_choices(build, "layout")) == layout_choices(labelled_only=True)
    assert list(_choices(evaluate, "layout")) == layout_choices()
    assert list(_choices(repository_cmd, "features_backend")) == list(FEATURES_BACKENDS)
    assert list(_choices(repository_cmd, "mode")) == list(MODES) == list(_choices(build, "default_mode"))
    assert list(_choices(synth, "method")) == list(SYNTH_METHODS)


def test_every_features_backend_makes_a_valid_config():
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from exdd.serving.configs import Serving, features_config
    from exdd.serving.registry import FEATURES_BACKENDS
    from exdd_scoring import FeatureSpec

    spec = FeatureSpec("wide_resnet50_2", "random:0", (128, 64), ("layer2", "layer3"), (16, 8), 0, "ab" * 32, 16)
    for name, b in FEATURES_BACKENDS.items():
        c = text_format.Parse(features_config(spec, name, Serving()), model_config_pb2.ModelConfig())
        assert (c.platform or None) == b.platform and (c.backend or None) == b.backend, name
        assert list(c.output[0].dims) == [16, 8, 16] and list(c.input[0].dims) == [128, 64, 3]
