"""The one evaluation results schema: round trip, version, validation, and the writers that use it."""

import json

import pytest

from exdd.results import RESULTS_VERSION, ErrorRow, EvaluationResults, ImageResult, ResultsError
from exdd_scoring import MODES


def sample() -> EvaluationResults:
    return EvaluationResults(
        metrics={"exdd": {"image_auroc": 0.9, "pixel_auroc": float("nan")}},
        default_mode="exdd",
        images=[ImageResult("/a.png", 1, {"exdd": 2.5}, "scratch", 1.0, 0.4, heatmap="/h.png")],
        errors=[ErrorRow("/b.png", "/b.png: truncated")],
        thresholds={"exdd": 1.5},
        weights="random:0",
        extra={"served": {"images": 1}},
    )


def test_round_trip_is_strict_json_with_a_version(tmp_path):
    path = sample().save(str(tmp_path / "r" / "results.json"))
    text = open(path).read()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert data["version"] == RESULTS_VERSION and data["metrics"]["exdd"]["pixel_auroc"] is None
    back = EvaluationResults.load(path)
    assert back.images == sample().images and back.errors == sample().errors and back.extra == {"served": {"images": 1}}
    assert back.to_dict() == data


def test_unversioned_files_read_and_newer_or_malformed_are_refused(tmp_path):
    old = sample().to_dict()
    del old["version"]
    assert EvaluationResults.from_dict(old).version == RESULTS_VERSION
    with pytest.raises(ResultsError, match="version 99 is newer"):
        EvaluationResults.from_dict({**old, "version": 99}, "x.json")
    with pytest.raises(ResultsError, match=r"x.json: images\[0\] needs 'path'"):
        EvaluationResults.from_dict({**old, "images": [{"scores": {}}]}, "x.json")
    with pytest.raises(ResultsError, match="scores and label must be numbers"):
        EvaluationResults.from_dict({**old, "images": [{"path": "p", "scores": {"exdd": "high"}}]}, "x.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ResultsError, match="bad.json: expected a JSON object"):
        EvaluationResults.load(str(bad))


def test_offline_evaluate_writes_the_schema_and_report_reads_it(tiny_dataset, tiny_banks, tmp_path):
    from click.testing import CliRunner
    from conftest import run_exdd

    out = tmp_path / "r.json"
    run_exdd("offline", "evaluate", str(tiny_dataset), "--banks", str(tiny_banks), "--out", str(out))
    res = EvaluationResults.load(str(out))
    assert res.version == RESULTS_VERSION and res.source == "offline" and len(res.images) == 6
    assert set(res.modes) == set(MODES) and all(im.s_neg is not None for im in res.images)
    from exdd.report.cli import report

    r = CliRunner().invoke(report, [str(out), "--out", str(tmp_path / "page.html")])
    assert r.exit_code == 0, r.output
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**json.loads(out.read_text()), "version": RESULTS_VERSION + 1}))
    r = CliRunner().invoke(report, [str(newer), "--out", str(tmp_path / "p2.html")])
    assert r.exit_code == 2 and "newer than this exdd reads" in r.output
