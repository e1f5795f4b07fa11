"""`exdd offline evaluate` on a folder of awkward files (tests/corpus.py) with the tiny banks: a result or a clear
per-file error for each (the reader alone: tests/unit/test_bad_inputs.py)."""

from __future__ import annotations

import os

import corpus
import pytest


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, corpus.make(root)


def test_offline_evaluate_answers_every_file(bad, tiny_banks, tmp_path):
    """A folder of awkward files as a test split: results for the readable, named errors for the rest."""
    import json

    from conftest import run_exdd

    root, expect = bad
    out = tmp_path / "r.json"
    p = run_exdd(
        "offline",
        "evaluate",
        str(root),
        "--banks",
        str(tiny_banks),
        "--out",
        str(out),
        "--layout",
        "folder",
        "--no-pixel",
    )
    r = json.loads(out.read_text())
    scored = {os.path.relpath(i["path"], root) for i in r["images"]}
    failed = {os.path.relpath(e["path"], root) for e in r["errors"]}
    assert scored | failed == set(expect) and not scored & failed
    assert {k for k, v in expect.items() if v == "ok"} <= scored
    assert {k for k, v in expect.items() if v == "error"} <= failed
    assert "Traceback" not in p.stderr
