"""The result-row contract (exdd.result_rows): what the client's ResultWriter writes, the reader (used by
``offline update --from-results``) reads back, in both formats, also after a resume past a torn line."""
from __future__ import annotations

import math

import pytest

from exdd.client.results import ResultWriter
from exdd.result_rows import COLUMNS, file_format, read_rows


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.csv"])
def test_written_rows_read_back_after_a_resume_past_a_torn_line(tmp_path, name):
    out = str(tmp_path / name)
    w = ResultWriter(out, resume=False)
    w.write({"path": "a.png", "score": 0.25, "is_defect": False, "mode": "exdd", "ignored": 1})
    w.write({"path": "b.png", "score": math.nan, "error": "b.png: unreadable"})
    w.close()
    with open(out, "a") as f:                    # a kill in the middle of a write leaves a line without its end
        f.write('{"path": "torn' if name.endswith("jsonl") else "torn.png,0.5")
    resumed = ResultWriter(out)
    assert resumed.done == {"a.png", "b.png"}
    resumed.write({"path": "c.png", "score": 1.5})
    resumed.close()
    rows = read_rows(out)
    assert [r["path"] for r in rows] == ["a.png", "b.png", "c.png"] and all(list(r) == COLUMNS for r in rows)
    if file_format(out) == "csv":                # CSV keeps text; an absent or non-finite value is empty
        assert (rows[0]["score"], rows[0]["is_defect"], rows[1]["score"], rows[2]["mode"]) == ("0.25", "False", "", "")
    else:
        assert (rows[0]["score"], rows[0]["is_defect"], rows[1]["score"], rows[2]["mode"]) == (0.25, False, None, None)
    assert rows[1]["error"] == "b.png: unreadable"
