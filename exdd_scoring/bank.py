"""Bank directories: ``.npy`` arrays plus a JSON manifest; loading never unpickles.

A bank directory holds ``negative.npy`` / ``negative_neighbors.npy`` (and the same for
``positive``) and ``manifest.json`` (a ``BankManifest``, manifest.py). The manifest names the features
the banks were built with (FEATURE_KEYS) and the sha256 of every array file; loading verifies both and
refuses anything that does not match, naming the mismatch.

A bank built with a fitted projection (``features.projection`` other than 'random', issue 25) also holds
``projection.npy``, the float32 (1536, d) matrix the extractor applies, listed in ``files`` like the banks and
hashed as ``features.projection_sha256``: the exporter, evaluate and update read it from here (a fitted
projection is never refitted after the build). A random projection is not stored: its seed makes it again.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from typing import Any, Dict, Mapping, Optional, Type, Union

import numpy as np

from .manifest import (  # noqa: F401
    BANK_FORMAT_VERSION,
    MANIFEST,
    MIN_K,
    BankError,
    BankManifest,
    FileEntry,
    ManifestError,  # MIN_K, check_k: re-exported
    check_k,
    safe_name,
)
from .nearest import FILES as SOURCE_FILES
from .nearest import DefectSources, SourcesError, check_sources
from .roi import ROI_FILE, ROI_PNG, RoiError, check_roi
from .spec import IDENTITY, RANDOM_PROJECTION, REQUIRED, FeatureSpec, SpecError

FEATURE_KEYS = IDENTITY  # what makes two feature extractors interchangeable (FeatureSpec's identity)
PROJECTION_FILE = "projection.npy"


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
    """The negative (normal) and positive (defect) banks with their manifest (a dict is read as one, validated);
    issue 27: the region of interest (bool (H, W) at the model input, roi.py; None: everywhere) and the positive
    bank's defect sources (nearest.py; None: banks built before them)."""

    negative: Bank
    positive: Optional[Bank]
    manifest: BankManifest
    roi: Optional[np.ndarray] = None
    sources: Optional[DefectSources] = None

    def __post_init__(self) -> None:
        self.manifest = BankManifest.from_dict(self.manifest, "bank manifest")

    @property
    def features(self) -> FeatureSpec:
        """The manifest's features."""
        return self.manifest.features


def sha256_file(path: str) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def projection_sha256(p: np.ndarray) -> str:
    """sha256 of a projection matrix's float32 C-order bytes (the features' projection_sha256)."""
    return hashlib.sha256(np.ascontiguousarray(p, dtype=np.float32).tobytes()).hexdigest()


def save_bank(
    directory: str,
    negative: Bank,
    positive: Optional[Bank],
    manifest: Union[BankManifest, Mapping[str, Any]],
    projection: Optional[np.ndarray] = None,
    roi: Optional[np.ndarray] = None,
    roi_png: Optional[bytes] = None,
    sources: Optional[DefectSources] = None,
) -> BankManifest:
    """Write the arrays and manifest.json (with their checksums) into directory; returns the manifest written.

    projection: the extractor's matrix, required when the features' projection is fitted (written as
    projection.npy), never stored for a random one. roi: the input-sized ROI (roi.npy) and roi_png the mask file
    as given (roi.png); sources: the positive bank's defect sources (issue 27), one row per positive row."""
    kind = type(manifest) if isinstance(manifest, BankManifest) else BankManifest  # an OfflineManifest stays one
    if isinstance(manifest, BankManifest):  # what is written must read back: check it as a reader will
        manifest = manifest.to_dict()
    manifest = kind.from_dict(manifest, f"{os.path.join(directory, MANIFEST)} (to write)")
    os.makedirs(directory, exist_ok=True)
    files: Dict[str, FileEntry] = {}
    parts = [("negative", negative)] + ([("positive", positive)] if positive is not None else [])
    for name, bank in parts:
        for suffix, arr in (("", bank.vectors.astype(np.float32)), ("_neighbors", bank.neighbors.astype(np.int32))):
            fname = f"{name}{suffix}.npy"
            path = os.path.join(directory, fname)
            np.save(path, np.ascontiguousarray(arr), allow_pickle=False)
            files[fname] = FileEntry(sha256_file(path), tuple(int(v) for v in arr.shape), str(arr.dtype))
    files.update(_save_projection(directory, manifest.features, projection))
    extras: list = []  # (file name, array) of the optional files
    if roi is not None:
        extras.append((ROI_FILE, check_roi(np.asarray(roi), manifest.features.input_size, directory).astype(np.uint8)))
    if sources is not None:
        check_sources(
            sources.rows, sources.images, sources.classes, 0 if positive is None else positive.size, directory
        )
        extras += list(sources.arrays())
    for fname, arr in extras:
        path = os.path.join(directory, fname)
        np.save(path, np.ascontiguousarray(arr), allow_pickle=False)
        files[fname] = FileEntry(sha256_file(path), tuple(int(v) for v in arr.shape), str(arr.dtype))
    if roi_png is not None:
        path = os.path.join(directory, ROI_PNG)
        with open(path, "wb") as f:
            f.write(roi_png)
        files[ROI_PNG] = FileEntry(sha256_file(path), (len(roi_png),), "png")
    manifest = replace(manifest, format_version=BANK_FORMAT_VERSION, files=files)
    write_manifest(directory, manifest)
    return manifest


def _save_projection(directory: str, features: FeatureSpec, projection: Optional[np.ndarray]) -> Dict[str, FileEntry]:
    """{PROJECTION_FILE: entry} after writing a fitted projection; {} for a random one. BankError when the matrix
    is missing or is not the one the features name."""
    fitted = features.projection != RANDOM_PROJECTION
    if not fitted:
        return {}
    path = os.path.join(directory, PROJECTION_FILE)
    if projection is None:
        raise BankError(
            f"{path}: the features use a fitted projection ({features.projection!r}): its matrix is "
            "needed to write the banks"
        )
    arr = np.ascontiguousarray(projection, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != features.d or projection_sha256(arr) != features.projection_sha256:
        raise BankError(
            f"{path}: the projection given ({arr.shape}, sha256 {projection_sha256(arr)[:12]}...) is not "
            f"the features' ({features.projection}, d {features.d}, sha256 "
            f"{features.projection_sha256[:12]}...)"
        )
    np.save(path, arr, allow_pickle=False)
    return {PROJECTION_FILE: FileEntry(sha256_file(path), tuple(int(v) for v in arr.shape), str(arr.dtype))}


def load_projection(directory: str, manifest: Optional[BankManifest] = None) -> Optional[np.ndarray]:
    """The fitted projection (float32 (c, d)) stored in a bank directory, verified against the manifest's file
    checksum and the features' projection_sha256; None for a random projection (made again from its seed)."""
    manifest = manifest if manifest is not None else read_manifest(directory)
    f = manifest.features
    if f.projection == RANDOM_PROJECTION:
        return None
    entry = manifest.files.get(PROJECTION_FILE)
    if entry is None:
        raise BankError(
            f"{os.path.join(directory, MANIFEST)}: the features use a fitted projection "
            f"({f.projection!r}) but the bank lists no {PROJECTION_FILE}: rebuild the banks with "
            f"`exdd offline build DATASET --out DIR --projection {f.projection}`"
        )
    arr = _load_array(directory, PROJECTION_FILE, entry)
    if arr.ndim != 2 or arr.shape[1] != f.d or arr.dtype != np.float32:
        raise BankError(
            f"{os.path.join(directory, PROJECTION_FILE)}: shape/dtype {arr.shape}/{arr.dtype}, expected "
            f"(channels, {f.d}) float32"
        )
    digest = projection_sha256(arr)
    if digest != f.projection_sha256:
        raise BankError(
            f"{os.path.join(directory, PROJECTION_FILE)}: the matrix hashes to {digest[:12]}..., the "
            f"features name {f.projection_sha256[:12]}...: not the projection the banks were built with"
        )
    return arr


def write_manifest(directory: str, manifest: BankManifest) -> None:
    """Write directory/manifest.json (after the arrays it lists)."""
    manifest.write(os.path.join(directory, MANIFEST))


def read_manifest(directory: str, cls: Type[BankManifest] = BankManifest) -> BankManifest:
    """The validated manifest of a bank directory (read as cls: provenance.OfflineManifest types the provenance);
    BankError naming the file (and the field) when absent or malformed."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise BankError(f"{directory}: no {MANIFEST} (not a bank directory)")
    manifest = cls.read(path)
    if manifest.format_version != BANK_FORMAT_VERSION:
        raise ManifestError(f"{path}: format_version {manifest.format_version!r} is not {BANK_FORMAT_VERSION}")
    if not manifest.files:
        raise ManifestError(f"{path}: missing key 'files' (the bank arrays and their checksums)")
    return manifest


def check_features(manifest_features: Any, expected: Any, where: str) -> None:
    """Raise BankError naming every FEATURE_KEYS value that differs between bank and features.

    Either side may be a FeatureSpec or its dict; a dict ``expected`` is compared on the keys it has (a whole
    fingerprint that names no projection kind is a random one, as it was written before fitted projections).
    """
    manifest_features, expected = _identity_of(manifest_features), _identity_of(expected)
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
        hint = ""
        kinds = {manifest_features.get("projection", RANDOM_PROJECTION), expected.get("projection", RANDOM_PROJECTION)}
        if any(d.startswith("projection") for d in diffs) and kinds != {RANDOM_PROJECTION}:
            hint = (
                " (a fitted projection belongs to the banks it was fitted for: extract with these banks' own, "
                "`exdd export onnx --banks DIR` bakes in their projection.npy)"
            )
        raise BankError(f"{where}: bank does not match the features it is used with -- " + "; ".join(diffs) + hint)


def _identity_of(features: Any) -> Dict[str, Any]:
    """The fingerprint's JSON form, a whole one read as a FeatureSpec (so a missing projection kind is 'random')."""
    if isinstance(features, FeatureSpec):
        return features.to_dict()
    if isinstance(features, Mapping) and all(k in features for k in REQUIRED):
        try:
            return FeatureSpec.from_dict(features).to_dict()
        except SpecError:
            pass
    return dict(features)


def _load_array(directory: str, fname: str, meta: FileEntry) -> np.ndarray:
    path = os.path.join(directory, safe_name(fname, directory))
    if not os.path.isfile(path):
        raise BankError(f"{path}: missing bank file")
    digest = sha256_file(path)
    if digest != meta.sha256:
        raise BankError(
            f"{path}: checksum mismatch (file is {digest[:12]}..., manifest says "
            f"{meta.sha256[:12]}...): truncated or altered on disk"
        )
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise BankError(f"{path}: not a plain .npy array ({e})") from None
    if tuple(arr.shape) != meta.shape or str(arr.dtype) != meta.dtype:
        raise BankError(f"{path}: shape/dtype {arr.shape}/{arr.dtype} differ from the manifest")
    return arr


def load_banks(
    directory: str, expected_features: Any = None, manifest_cls: Type[BankManifest] = BankManifest
) -> BankPair:
    """Load and verify a bank directory; expected_features (a FeatureSpec, or a FEATURE_KEYS subset) must match; the
    manifest read as manifest_cls (see read_manifest)."""
    manifest = read_manifest(directory, manifest_cls)
    if expected_features is not None:
        check_features(manifest.features, expected_features, directory)
    files = manifest.files
    d = manifest.features.d
    banks: Dict[str, Optional[Bank]] = {}
    for name in ("negative", "positive"):
        if f"{name}.npy" not in files:
            banks[name] = None
            continue
        vec = _load_array(directory, f"{name}.npy", files[f"{name}.npy"])
        nbr = _load_array(directory, f"{name}_neighbors.npy", files[f"{name}_neighbors.npy"])
        if vec.ndim != 2 or vec.shape[1] != d or nbr.shape[0] != vec.shape[0]:
            raise BankError(
                f"{directory}: {name} bank has shape {vec.shape} / neighbours {nbr.shape}, expected (n, {d})"
            )
        if nbr.size and (nbr.min() < 0 or nbr.max() >= vec.shape[0]):
            raise BankError(f"{directory}: {name}_neighbors.npy holds indices outside the bank")
        banks[name] = Bank(vec, nbr) if vec.shape[0] > 0 else None
    if banks["negative"] is None:
        raise BankError(f"{directory}: the negative (normal) bank is missing or empty")
    roi, sources = None, None
    try:
        if ROI_FILE in files:
            roi = check_roi(
                _load_array(directory, ROI_FILE, files[ROI_FILE]),
                manifest.features.input_size,
                os.path.join(directory, ROI_FILE),
            )
        if all(f in files for f in SOURCE_FILES) and banks["positive"] is not None:
            rows, images, classes = (_load_array(directory, f, files[f]) for f in SOURCE_FILES)
            check_sources(rows, images, classes, banks["positive"].size, directory)
            sources = DefectSources(rows, images, classes)
    except (RoiError, SourcesError) as e:
        raise BankError(str(e)) from None
    return BankPair(banks["negative"], banks["positive"], manifest, roi, sources)


def read_manifest_features(directory: str) -> Dict[str, Any]:
    """The 'features' section of a bank directory's manifest (its JSON form)."""
    return read_manifest(directory).features.to_dict()


def read_manifest_spec(directory: str) -> FeatureSpec:
    """The FeatureSpec of a bank directory's manifest (validated by read_manifest)."""
    return read_manifest(directory).features
