"""Result files (JSONL or CSV), appended row by row, resumable after a stop or a kill, one writer at a time.

A row is written and flushed as soon as its turn comes (rows keep the input order). On resume,
the rows already in the file are kept, a torn last line (from a kill mid-write) is cut off, and
the paths they name are skipped, so a finished job has each image exactly once. Paths are matched
by their resolved form (absolute, normalised: ``row_key``), so ``a.png``, ``./a.png`` and ``/abs/a.png`` are one
image. A complete line that is not a row is reported by its line number and left as it is; its image is scored
again. With ``retry_errors`` the rows of a server-side failure (error_kind "server": a crashed backend) are taken
out of the file (an atomic rewrite) so that their images are scored again; rows of a bad file (error_kind "input")
stay. The columns and the reader are ``exdd.result_rows`` (offline update reads the rows too); the one-writer lock
is ``output_lock``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any, Dict, List, Set

from exdd.fileio import atomic_write
from exdd.result_rows import COLUMNS, ENCODING, file_format, parse_rows

from .output_lock import OutputLock

_LEGACY_SERVER_ERROR = "server rejected the request"  # rows written before error_kind existed


def row_key(path: str) -> str:
    """The resolved form of a path that resume matches on: absolute and normalised (symlinks are not followed)."""
    return os.path.abspath(path)


def retriable(row: Dict[str, Any]) -> bool:
    """Whether a row records a transient server failure (rescored by --retry-errors), not a bad file."""
    if not row.get("error"):
        return False
    kind = row.get("error_kind") or ""
    return kind == "server" or (not kind and _LEGACY_SERVER_ERROR in str(row["error"]))


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _json_line(row: Dict[str, Any]) -> str:
    """One JSONL row; a name with non-UTF-8 bytes (lone surrogates) as JSON \\udcXX escapes, so the file stays UTF-8."""
    text = json.dumps(row, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(row)
    return text + "\n"


def _csv_text(rows: List[Dict[str, Any]]) -> str:
    """A whole CSV result file of rows (the header, then one line per row)."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow(["" if r.get(k) is None else r.get(k) for k in COLUMNS])
    return buf.getvalue()


class ResultWriter:
    """Appends rows to a JSONL/CSV file; `done` holds the resolved paths already answered; `notes` what resuming
    found (lines skipped, a dead job's lock taken over, rows to score again). Holds the file's lock until close."""

    def __init__(self, path: str, resume: bool = True, retry_errors: bool = False):
        self.path = path
        self.fmt = file_format(path)
        self.done: Set[str] = set()
        self.notes: List[str] = []
        self.retried = 0
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        self.lock = OutputLock(path)  # before anything is read or truncated: one writer per file
        stale = self.lock.stale_note()
        if stale:
            self.notes.append(stale)
        try:
            if resume and os.path.exists(path):
                self._recover(retry_errors)
            else:
                with open(path, "w", newline="", **ENCODING) as f:
                    if self.fmt == "csv":
                        csv.writer(f).writerow(COLUMNS)
            self._f = open(path, "a", newline="", **ENCODING)
        except BaseException:
            self.lock.release()
            raise

    def _recover(self, retry_errors: bool) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        keep = data.rfind(b"\n") + 1  # a torn last line has no newline: cut it
        if keep != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(keep)
        text = data[:keep].decode(**ENCODING)
        problems: List = []
        rows = parse_rows(text, self.fmt, problems)
        for n, why in problems:
            self.notes.append(f"{self.path} line {n}: {why}: skipped (left in the file); its image is scored again")
        retry = [r for r in rows if retriable(r)] if retry_errors else []
        header = text.split("\n", 1)[0].rstrip("\r") if self.fmt == "csv" else None
        if self.fmt == "csv" and header != ",".join(COLUMNS):
            self._rewrite(text, rows, retry)  # empty, or written before a column was added: same rows
        elif retry:
            self._rewrite(text, rows, retry)
        if retry:
            self.retried = len(retry)
            self.notes.append(
                f"{self.path}: {len(retry)} row(s) of a server-side failure taken out, their images "
                "are scored again (--retry-errors)"
            )
        gone = {id(r) for r in retry}
        self.done = {row_key(r["path"]) for r in rows if id(r) not in gone}

    def _rewrite(self, text: str, rows: List[Dict[str, Any]], drop: List[Dict[str, Any]]) -> None:
        """The file without the rows of drop (all retriable), replaced atomically (a kill leaves the old file or the
        new one); a CSV is written with today's header."""
        gone = {id(r) for r in drop}
        if self.fmt == "csv":
            out = _csv_text([r for r in rows if id(r) not in gone])
        else:  # every line as it was (lines that are not rows too), but the dropped rows' (all retriable)
            out = "".join(ln + "\n" for ln in text.split("\n")[:-1] if not (drop and _retriable_line(ln)))
        atomic_write(self.path, out.encode(**ENCODING), fsync=True)

    def write(self, row: Dict[str, Any]) -> None:
        """Append one row and flush it to the OS."""
        row = {k: _clean(row.get(k)) for k in COLUMNS}
        if self.fmt == "csv":
            w = csv.writer(self._f)
            w.writerow(["" if row[k] is None else row[k] for k in COLUMNS])
        else:
            self._f.write(_json_line(row))
        self._f.flush()
        self.done.add(row_key(row["path"]))

    def close(self) -> None:
        """Flush and sync the file, then release its lock."""
        if self._f.closed:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self.lock.release()


def _retriable_line(line: str) -> bool:
    try:
        row = json.loads(line)
    except ValueError:
        return False  # a line that is not a row stays as it is
    return isinstance(row, dict) and retriable(row)
