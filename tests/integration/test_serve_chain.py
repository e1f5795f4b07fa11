"""scripts/harness.py's serve chain end to end: banks built, the extractor exported, a repository assembled."""

import os

import pytest
import tiny_world
from conftest import TINY_ARGS

from scripts import harness


# slow (31 s on 2 cores): the benchmarks' chain; the same three commands run in the default suite through the demo
# and the export tests. Out of the default run to keep it under 10 minutes; `./run tests -m slow` runs it.
@pytest.mark.slow
def test_serve_chain_builds_banks_exports_the_extractor_and_assembles_a_repository(tiny_dataset, tmp_path):
    import json

    chain = harness.serve_chain(
        str(tmp_path),
        dataset=str(tiny_dataset),
        build=TINY_ARGS,
        export=("--parity-count", "1"),
        repository=("--features-backend", "python"),
    )
    assert set(chain.seconds) == {"build", "onnx", "repository"} and all(v > 0 for v in chain.seconds.values())
    assert chain.banks == str(tmp_path / "banks") and os.path.isfile(os.path.join(chain.banks, "manifest.json"))
    assert os.path.isfile(chain.onnx) and chain.onnx == str(tmp_path / "f32.onnx")
    assert {"exdd", "exdd_features", "exdd_scorer"} <= set(os.listdir(chain.repo))
    with open(os.path.join(chain.repo, "exdd_scorer", "1", "features.json")) as f:
        assert json.load(f)["d"] == tiny_world.D
    again = harness.serve_chain(
        str(tmp_path), banks=chain.banks, onnx=str(tmp_path / "b.onnx"), repo=str(tmp_path / "repo-b")
    )  # banks given: no build
    assert set(again.seconds) == {"onnx", "repository"} and os.path.isdir(again.repo)
