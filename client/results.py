"""Result files (JSONL or CSV), appended row by row, resumable after a stop or a kill.

A row is written and flushed as soon as its turn comes (rows keep the input order). On resume,
the rows already in the file are kept, a torn last line (from a kill mid-write) is cut off, and
the paths they name are skipped, so a finished job has each image exactly once. The columns and
the reader are ``exdd.result_rows`` (offline update reads the rows too).
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Dict, Set

from exdd.result_rows import COLUMNS, file_format, parse_rows


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class ResultWriter:
    """Appends rows to a JSONL/CSV file; `done` holds the paths already answered."""

    def __init__(self, path: str, resume: bool = True):
        self.path = path
        self.fmt = file_format(path)
        self.done: Set[str] = set()
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        if resume and os.path.exists(path):
            self._recover()
        else:
            with open(path, "w", newline="") as f:
                if self.fmt == "csv":
                    csv.writer(f).writerow(COLUMNS)
        self._f = open(path, "a", newline="")

    def _recover(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        keep = data.rfind(b"\n") + 1          # a torn last line has no newline: cut it
        if keep != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(keep)
        text = data[:keep].decode("utf-8", errors="replace")
        rows = parse_rows(text, self.fmt)
        if self.fmt == "csv" and not text:
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(COLUMNS)
        self.done = {r["path"] for r in rows}

    def write(self, row: Dict[str, Any]) -> None:
        """Append one row and flush it to the OS."""
        row = {k: _clean(row.get(k)) for k in COLUMNS}
        if self.fmt == "csv":
            w = csv.writer(self._f)
            w.writerow(["" if row[k] is None else row[k] for k in COLUMNS])
        else:
            self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()
        self.done.add(row["path"])

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

