"""The per-image result rows of ``exdd client score`` (JSONL or CSV), defined once: columns and reader.

``exdd.client.results`` writes them (resumably); ``exdd offline update --verdicts`` reads them back
with an operator's verdict column added, to teach the banks the false alarms. Both import this
module, so the offline layer never reaches up into the client.
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any, Dict, List

COLUMNS = ["path", "score", "is_defect", "score_neg", "score_pos", "threshold", "mode", "latency_ms", "heatmap",
           "error", "warning"]


def file_format(path: str) -> str:
    """csv for a .csv path, else jsonl: the file name decides, as for the writer."""
    return "csv" if path.lower().endswith(".csv") else "jsonl"


def parse_rows(text: str, fmt: str) -> List[Dict[str, Any]]:
    """The rows of complete lines of a result file's text in format fmt (csv | jsonl)."""
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text)))
    return [json.loads(line) for line in text.split("\n") if line.strip()]   # the writer ends rows with \n only


def read_rows(path: str) -> List[Dict[str, Any]]:
    """All complete rows of a result file."""
    with open(path, newline="") as f:
        return parse_rows(f.read(), file_format(path))
