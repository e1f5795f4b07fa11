"""Bank directories: ``.npy`` arrays plus a JSON manifest; loading never unpickles.

A bank directory holds ``negative.npy`` / ``negative_neighbors.npy`` (and the same for
``positive``) and ``manifest.json``. The manifest names the features the banks were built
with (FEATURE_KEYS) and the sha256 of every array file; loading verifies both and refuses
anything that does not match, naming the mismatch.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from .spec import IDENTITY, FeatureSpec, SpecError

BANK_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FEATURE_KEYS = IDENTITY   # what makes two feature extractors interchangeable (FeatureSpec's identity)


# The reweighting needs k-1 >= 1 neighbours of m*: with k = 1 q is 0, s+ is 0 and every exdd score is s-/eps.
MIN_K = 2


class BankError(ValueError):
    """A bank directory that cannot be used: missing, corrupt, or made for other features."""


def check_k(k: Any, where: str) -> int:
    """k as an int >= MIN_K; BankError naming where otherwise."""
    if isinstance(k, bool) or not isinstance(k, int) or k < MIN_K:
        raise BankError(f"{where}: k = {k!r}: the neighbourhood size of the reweighting must be an integer "
                        f">= {MIN_K} (k = 1 leaves no neighbours and makes every exdd score s_neg / eps)")
    return k


@dataclass
class Bank:
    """One memory bank: (n, d) float32 vectors and the (n, k-1) within-bank neighbour indices."""
    vectors: np.ndarray
    neighbors: np.ndarray

    @property
    def size(self) -> int:
        return int(self.vectors.shape[0])


@dataclass
class BankPair:
    """The negative (normal) and positive (defect) banks with their manifest."""
    negative: Bank
    positive: Optional[Bank]
    manifest: Dict[str, Any] = field(default_factory=dict)

    @property
    def features(self) -> FeatureSpec:
        """The manifest's features as a FeatureSpec."""
        return FeatureSpec.from_dict(self.manifest.get("features"), "bank manifest")


def sha256_file(path: str) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def safe_file_name(name: str, where: str) -> str:
    """A manifest file entry must be a plain file name inside the bank directory."""
    if not isinstance(name, str) or not name or name != os.path.basename(name) or name in (".", "..") \
            or "\\" in name or "\x00" in name:
        raise BankError(f"{where}: file entry {name!r} is not a plain file name inside the bank directory")
    return name


def save_bank(directory: str, negative: Bank, positive: Optional[Bank], manifest: Dict[str, Any]) -> Dict[str, Any]:
    """Write the arrays and manifest.json (with checksums) into directory; returns the manifest."""
    check_k(manifest.get("k"), directory)
    os.makedirs(directory, exist_ok=True)
    files: Dict[str, Any] = {}
    parts = [("negative", negative)] + ([("positive", positive)] if positive is not None else [])
    for name, bank in parts:
        for suffix, arr in (("", bank.vectors.astype(np.float32)), ("_neighbors", bank.neighbors.astype(np.int32))):
            fname = f"{name}{suffix}.npy"
            path = os.path.join(directory, fname)
            np.save(path, np.ascontiguousarray(arr), allow_pickle=False)
            files[fname] = {"sha256": sha256_file(path), "shape": list(arr.shape), "dtype": str(arr.dtype)}
    manifest = dict(manifest)
    manifest["format_version"] = BANK_FORMAT_VERSION
    manifest["files"] = files
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    return manifest


def read_manifest(directory: str) -> Dict[str, Any]:
    """The parsed manifest of a bank directory, with a clear error when absent or malformed."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise BankError(f"{directory}: no {MANIFEST} (not a bank directory)")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise BankError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != BANK_FORMAT_VERSION:
        raise BankError(f"{path}: format_version {manifest.get('format_version') if isinstance(manifest, dict) else None!r}"
                        f" is not {BANK_FORMAT_VERSION}")
    for key in ("features", "files", "k"):
        if key not in manifest:
            raise BankError(f"{path}: missing key {key!r}")
    for name in manifest["files"]:
        safe_file_name(name, path)
    check_k(manifest["k"], path)
    try:
        FeatureSpec.from_dict(manifest["features"], f"{path}: features")
    except SpecError as e:
        raise BankError(str(e)) from None
    return manifest


def check_features(manifest_features: Any, expected: Any, where: str) -> None:
    """Raise BankError naming every FEATURE_KEYS value that differs between bank and features.

    Either side may be a FeatureSpec or its dict; a dict ``expected`` is compared on the keys it has.
    """
    if isinstance(manifest_features, FeatureSpec):
        manifest_features = manifest_features.to_dict()
    if isinstance(expected, FeatureSpec):
        expected = expected.to_dict()
    diffs = []
    for key in FEATURE_KEYS:
        if key not in expected:
            continue
        a, b = manifest_features.get(key), expected[key]
        if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
            a, b = list(a) if a is not None else a, list(b) if b is not None else b
        if a != b:
            diffs.append(f"{key}: bank has {a!r}, features have {b!r}")
    if diffs:
        raise BankError(f"{where}: bank does not match the features it is used with -- " + "; ".join(diffs))


def _load_array(directory: str, fname: str, meta: Dict[str, Any]) -> np.ndarray:
    path = os.path.join(directory, safe_file_name(fname, directory))
    if not os.path.isfile(path):
        raise BankError(f"{path}: missing bank file")
    digest = sha256_file(path)
    if digest != meta.get("sha256"):
        raise BankError(f"{path}: checksum mismatch (file is {digest[:12]}..., manifest says "
                        f"{str(meta.get('sha256'))[:12]}...): truncated or altered on disk")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise BankError(f"{path}: not a plain .npy array ({e})") from None
    if list(arr.shape) != list(meta.get("shape", [])) or str(arr.dtype) != meta.get("dtype"):
        raise BankError(f"{path}: shape/dtype {arr.shape}/{arr.dtype} differ from the manifest")
    return arr


def load_banks(directory: str, expected_features: Any = None) -> BankPair:
    """Load and verify a bank directory; expected_features (a FeatureSpec, or a FEATURE_KEYS subset) must match."""
    manifest = read_manifest(directory)
    if expected_features is not None:
        check_features(manifest["features"], expected_features, directory)
    files = manifest["files"]
    d = manifest["features"].get("d")
    banks: Dict[str, Optional[Bank]] = {}
    for name in ("negative", "positive"):
        if f"{name}.npy" not in files:
            banks[name] = None
            continue
        vec = _load_array(directory, f"{name}.npy", files[f"{name}.npy"])
        nbr = _load_array(directory, f"{name}_neighbors.npy", files[f"{name}_neighbors.npy"])
        if vec.ndim != 2 or vec.shape[1] != d or nbr.shape[0] != vec.shape[0]:
            raise BankError(f"{directory}: {name} bank has shape {vec.shape} / neighbours {nbr.shape}, expected (n, {d})")
        if nbr.size and (nbr.min() < 0 or nbr.max() >= vec.shape[0]):
            raise BankError(f"{directory}: {name}_neighbors.npy holds indices outside the bank")
        banks[name] = Bank(vec, nbr) if vec.shape[0] > 0 else None
    if banks["negative"] is None:
        raise BankError(f"{directory}: the negative (normal) bank is missing or empty")
    return BankPair(banks["negative"], banks["positive"], manifest)


def read_manifest_features(directory: str) -> Dict[str, Any]:
    """The 'features' section of a bank directory's manifest."""
    return dict(read_manifest(directory)["features"])


def read_manifest_spec(directory: str) -> FeatureSpec:
    """The FeatureSpec of a bank directory's manifest (validated by read_manifest)."""
    return FeatureSpec.from_dict(read_manifest(directory)["features"], os.path.join(directory, MANIFEST))
