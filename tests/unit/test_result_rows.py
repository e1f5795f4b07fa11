"""The result-row contract (exdd.result_rows): what the client's ResultWriter writes, the reader (used by
``offline update --from-results``) reads back, in both formats, also after a resume past a torn line."""

from __future__ import annotations

import math
import os
import subprocess
import sys

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
    with open(out, "a") as f:  # a kill in the middle of a write leaves a line without its end
        f.write('{"path": "torn' if name.endswith("jsonl") else "torn.png,0.5")
    resumed = ResultWriter(out)
    assert resumed.done == {os.path.abspath("a.png"), os.path.abspath("b.png")}  # matched by resolved path
    resumed.write({"path": "c.png", "score": 1.5})
    resumed.close()
    rows = read_rows(out)
    assert [r["path"] for r in rows] == ["a.png", "b.png", "c.png"] and all(list(r) == COLUMNS for r in rows)
    if file_format(out) == "csv":  # CSV keeps text; an absent or non-finite value is empty
        assert (rows[0]["score"], rows[0]["is_defect"], rows[1]["score"], rows[2]["mode"]) == ("0.25", "False", "", "")
    else:
        assert (rows[0]["score"], rows[0]["is_defect"], rows[1]["score"], rows[2]["mode"]) == (0.25, False, None, None)
    assert rows[1]["error"] == "b.png: unreadable"


def test_one_writer_per_file_and_a_dead_writers_lock_is_taken_over(tmp_path):
    """Issue 26: a second writer on the same file refuses, naming the file and the holder's pid (was: two jobs
    doubled or cut rows); the lock file of a killed writer (SIGKILL: it never removed it) is taken over and said,
    since the kernel released its flock when it died."""
    from exdd.client.output_lock import OutputLocked

    out = str(tmp_path / "r.jsonl")
    first = ResultWriter(out)
    locked = f"{out}: another job is writing it \\(pid {os.getpid()}, lock file {out}.lock\\)"
    with pytest.raises(OutputLocked, match=locked):
        ResultWriter(out)
    with pytest.raises(OutputLocked, match="another job"):
        ResultWriter(out, resume=False)  # --restart never truncates a file another job writes
    first.write({"path": "a.png", "score": 1.0})
    first.close()
    assert not os.path.exists(out + ".lock")
    code = (
        "import os, sys; from exdd.client.results import ResultWriter; w = ResultWriter(sys.argv[1]); "
        "w.write({'path': 'b.png', 'score': 2.0}); print(os.getpid(), flush=True); os.kill(os.getpid(), 9)"
    )
    p = subprocess.run([sys.executable, "-c", code, out], capture_output=True, text=True)
    assert p.returncode == -9 and os.path.exists(out + ".lock")
    pid = int(p.stdout.split()[0])
    w = ResultWriter(out)
    assert any(f"left by pid {pid}, which is no longer running" in n for n in w.notes), w.notes
    assert w.done == {os.path.abspath("a.png"), os.path.abspath("b.png")}
    w.close()


def test_corrupt_lines_are_skipped_by_number_and_the_rest_resumes(tmp_path):
    """A complete line that is not a row (a stray write, a disk error) is reported by its line number and skipped; the
    rows around it stand, and the job goes on (was: a JSONDecodeError at the same spot on every rerun)."""
    out = str(tmp_path / "r.jsonl")
    w = ResultWriter(out)
    w.write({"path": "a.png", "score": 1.0})
    w.close()
    with open(out, "a") as f:
        f.write("\x00\x00garbage{\n[1, 2]\n")
    w = ResultWriter(out)
    w.write({"path": "c.png", "score": 3.0})
    w.close()
    assert [n.split(": ", 1)[0] for n in w.notes] == [f"{out} line 2", f"{out} line 3"]
    assert "not a JSON row" in w.notes[0] and "not a row object (list)" in w.notes[1]
    problems = []
    assert [r["path"] for r in read_rows(out, problems)] == ["a.png", "c.png"]
    assert [n for n, _ in problems] == [2, 3]


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.csv"])
def test_a_non_utf8_file_name_is_written_and_resumed_losslessly(tmp_path, name):
    """Linux file names are bytes: one that is not UTF-8 (os gives it as lone surrogates) is written (JSONL: as
    \\udcXX escapes, the file stays UTF-8; CSV: its raw bytes) and read back as the very same name."""
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9-\xff.png"  # Latin-1 bytes, not UTF-8
    path = os.fsdecode(raw)
    out = str(tmp_path / name)
    w = ResultWriter(out)
    w.write({"path": path, "error": f"{path}: not a recognised image file", "error_kind": "input"})
    w.close()
    if name.endswith("jsonl"):
        open(out, encoding="utf-8").read()  # valid UTF-8 text
    w = ResultWriter(out)
    assert w.done == {path}
    w.close()
    rows = read_rows(out)
    assert os.fsencode(rows[0]["path"]) == raw and rows[0]["error"].startswith(path)


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.csv"])
def test_retry_errors_takes_out_server_failures_only(tmp_path, name):
    """--retry-errors: rows of a server-side failure (error_kind server, or an old row of 'server rejected the
    request') leave the file (atomically) and their images are scored again; a bad file's row stays."""
    out = str(tmp_path / name)
    w = ResultWriter(out)
    w.write({"path": "ok.png", "score": 1.0})
    w.write(
        {
            "path": "crash.png",
            "error": "crash.png: server rejected the request (stub unhealthy)",
            "error_kind": "server",
        }
    )
    w.write({"path": "bad.png", "error": "bad.png: not a recognised image file", "error_kind": "input"})
    w.close()
    w = ResultWriter(out)
    assert w.done == {os.path.abspath(p) for p in ("ok.png", "crash.png", "bad.png")}  # without the flag: kept
    w.close()
    w = ResultWriter(out, retry_errors=True)
    assert w.done == {os.path.abspath(p) for p in ("ok.png", "bad.png")} and w.retried == 1
    w.write({"path": "crash.png", "score": 2.0})
    w.close()
    rows = read_rows(out)
    assert [(r["path"], r["error"] or None) for r in rows] == [
        ("ok.png", None),
        ("bad.png", "bad.png: not a recognised image file"),
        ("crash.png", None),
    ]
