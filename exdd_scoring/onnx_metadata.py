"""The exported extractor's ONNX metadata contract, defined once: keys, encoding and the reader.

``exdd export onnx`` writes the features fingerprint under ``exdd.features`` (JSON) and the precision
under ``exdd.precision``; ``offline build --extractor``, repository assembly and the served
``exdd_features`` model read them back. The contract lives in the scoring package because the served
model may import nothing else. Standard library at import time; ``read_metadata`` imports onnxruntime
when called (the library ``runtimes`` already opens the same file with, and a declared dependency of
every Python that reads an exported file), so the package stays numpy + stdlib for the scorer.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping

FEATURES_KEY = "exdd.features"
PRECISION_KEY = "exdd.precision"


class OnnxMetadataError(RuntimeError):
    """An ONNX file that cannot be read or carries no usable exdd metadata; the message names the file."""


def metadata_entries(features: Mapping[str, Any], precision: str) -> Dict[str, str]:
    """The metadata_props entries an export writes, encoded the way ``features_of`` decodes them."""
    return {FEATURES_KEY: json.dumps(dict(features), sort_keys=True), PRECISION_KEY: precision}


def features_of(meta: Mapping[str, str], where: str) -> Dict[str, Any]:
    """The features fingerprint (a dict) in metadata entries; OnnxMetadataError naming where when absent or bad."""
    if FEATURES_KEY not in meta:
        raise OnnxMetadataError(
            f"{where}: no '{FEATURES_KEY}' in the ONNX metadata (not exported by exdd export onnx?)"
        )
    try:
        feats = json.loads(meta[FEATURES_KEY])
    except ValueError as e:
        raise OnnxMetadataError(f"{where}: metadata '{FEATURES_KEY}' is not JSON ({e})") from None
    if not isinstance(feats, dict):
        raise OnnxMetadataError(f"{where}: metadata '{FEATURES_KEY}' is not a JSON object")
    return feats


def read_metadata(onnx_path: str) -> Dict[str, str]:
    """metadata_props of an ONNX file (read through ONNX Runtime, without loading the weights into Python)."""
    import onnxruntime as ort

    if not os.path.isfile(onnx_path):
        raise OnnxMetadataError(f"{onnx_path}: no such ONNX file")
    try:
        sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises several unrelated types for bad files
        raise OnnxMetadataError(f"{onnx_path}: not a loadable ONNX model ({type(e).__name__}: {e})") from None
    return dict(sess.get_modelmeta().custom_metadata_map)


def read_features(onnx_path: str) -> Dict[str, Any]:
    """The features fingerprint stored in an exported ONNX file."""
    return features_of(read_metadata(onnx_path), onnx_path)
