"""The per-image result rows of ``exdd client score`` (JSONL or CSV), defined once: columns and reader.

``exdd.client.results`` writes them (resumably); ``exdd offline update --verdicts`` reads them back
with an operator's verdict column added, to teach the banks the false alarms. Both import this
module, so the offline layer never reaches up into the client.

File names that are not valid UTF-8 (Linux allows any bytes) are kept losslessly, as Python's os functions give
them (undecodable bytes as lone surrogates U+DC80..U+DCFF): a JSONL row holds them as JSON escapes (\\udcff), so the
file stays valid UTF-8; a CSV row holds the name's raw bytes. Both read back (read_rows) as the very same name.
A line that is not a row (corrupt, a stray write) is skipped and said by its line number; the other rows stand.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Dict, List, Optional, Tuple, TypedDict

from exdd.log import get as _logger
from exdd_scoring.answer import FIELDS as LINE_FIELDS

log = _logger(__name__)

# error_kind: "input" (the file is bad: unreadable, not an accepted picture, refused by the server as invalid input;
# a rerun gets the same answer) or "server" (the server failed: a crashed backend, a model not ready; transient,
# scored again by `client score --retry-errors`); empty on a scored row
# issue 27 (README, "Running a line"): verdict (ok | review | defect), confidence (calibrated P(defect), empty when
# not calibrated), area (pixels of the model input) and box (the image's own pixels) of the largest region above the
# pixel threshold inside the ROI, box [x0, y0, x1, y1] with ends exclusive ([] without a region; JSON text in a
# CSV), nearest_source and nearest_class (the training image and class of the known defect nearest to the image's
# peak patch); empty from servers before issue 27
LINE_COLUMNS = list(LINE_FIELDS)
COLUMNS = [
    "path",
    "score",
    "is_defect",
    "score_neg",
    "score_pos",
    "threshold",
    "mode",
    "latency_ms",
    "heatmap",
    "error",
    "warning",
    "error_kind",
] + LINE_COLUMNS


class Encoding(TypedDict):
    """How result files are encoded: open(..., **ENCODING), bytes.decode(**ENCODING)."""

    encoding: str
    errors: str


# a CSV's raw non-UTF-8 name bytes read back the same
ENCODING: Encoding = {"encoding": "utf-8", "errors": "surrogateescape"}

Problems = List[Tuple[int, str]]  # (line number, why the line is not a row)


def file_format(path: str) -> str:
    """csv for a .csv path, else jsonl: the file name decides, as for the writer."""
    return "csv" if path.lower().endswith(".csv") else "jsonl"


def _row_problem(row: Any) -> Optional[str]:
    if not isinstance(row, dict):
        return f"not a row object ({type(row).__name__})"
    if not isinstance(row.get("path"), str) or not row["path"]:
        return "no 'path'"
    return None


def parse_rows(text: str, fmt: str, problems: Optional[Problems] = None) -> List[Dict[str, Any]]:
    """The rows of complete lines of a result file's text in format fmt (csv | jsonl). A line that is not a row is
    skipped: (line number, why) goes to problems when given, else to the log as a warning."""
    rows: List[Dict[str, Any]] = []
    bad: Problems = []
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                bad.append((reader.line_num, f"not a CSV row ({e})"))
                continue
            why = _row_problem(row)
            if why is None and None in row:
                why = "more fields than the header"
            if why:
                bad.append((reader.line_num, why))
            else:
                rows.append(row)
    else:
        for n, line in enumerate(text.split("\n"), 1):  # the writer ends rows with \n only
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                bad.append((n, f"not a JSON row ({e})"))
                continue
            why = _row_problem(row)
            if why:
                bad.append((n, why))
            else:
                rows.append(row)
    if problems is not None:
        problems.extend(bad)
    else:
        for n, why in bad:
            log.warning("line %d: %s: skipped", n, why)
    return rows


def read_rows(path: str, problems: Optional[Problems] = None) -> List[Dict[str, Any]]:
    """All complete rows of a result file (lines that are not rows skipped: see parse_rows)."""
    with open(path, newline="", **ENCODING) as f:
        text = f.read()
    if problems is None:
        found: Problems = []
        rows = parse_rows(text, file_format(path), found)
        for n, why in found:
            log.warning("%s line %d: %s: skipped", path, n, why)
        return rows
    return parse_rows(text, file_format(path), problems)
