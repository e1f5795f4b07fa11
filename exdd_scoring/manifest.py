"""``BankManifest``: the typed, validated, versioned ``manifest.json`` of a bank directory, defined once.

Written by ``exdd offline build`` and ``update``, read as attributes by the scorer, repository assembly, deploy
and the CLI. Each section is a frozen dataclass whose field types drive reading and writing (records.py);
``upgrade`` alone knows the older versions. Rules (a broken one names the file and the field):

- A present field of the wrong type or range is an error, never a silent default (a threshold that is not a
  number refuses the banks instead of serving none). Unknown keys are refused at every typed level: exdd is the
  only writer, so one is a typo or a hand edit (``treshold``); a later exdd adding a key raises ``version``,
  which this one refuses, saying how to proceed. Free-form: ``threshold.detail`` and ``threshold.calibrated``.
- Required: ``features`` and ``k`` (and in a bank directory ``format_version`` and ``files``). An absent field
  means its dataclass default: no ``threshold`` is uncalibrated (as ``--holdout 0`` writes), no ``scoring`` is
  gamma ``DEFAULT_GAMMA``, ``TOPK_FRACTION`` and the fusion's and image head's fixed fallbacks. A
  ``default_mode`` no longer registered (``exdd_peak``) is refused, saying to rebuild.
- The provenance (``coreset``, ``sources``, ``defect_patch_rule``, ``parent``, ``updates``) is read offline
  only: here JSON objects; ``provenance.OfflineManifest`` types it by the same rules. No Triton model imports it.
- ``version`` absent = 0; larger than ``MANIFEST_VERSION``: refused, saying to upgrade exdd or rebuild.
  ``to_dict`` writes the current version (the ``version`` attribute says what the manifest was read as).

numpy-free and standard library only (the package is copied into Triton model repositories).
"""

from __future__ import annotations

import json
import os
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Mapping, NewType, Optional, Tuple

from .line_rules import LineRules
from .records import (
    SCALARS,
    Finite,
    Name,
    Positive,
    Record,
    RecordError,
    dump,
    fail,
    field_types,
    json_object,
    optional,
)
from .scores import DEFAULT_GAMMA, DEFAULT_MODE, MODE_REGISTRY, TOPK_FRACTION
from .spec import FeatureSpec, SpecError

MANIFEST_VERSION = 3  # this schema; manifests without "version" are version 0 (untyped, before it)
# 1: the typed manifest. 2 (issue 25): sources.heldout_rule and heldout_fraction (absent: the seeded listing-order
#    hold-out, fraction unrecorded); scoring.topk and scoring.head (absent: TOPK_FRACTION, the head's fallback)
# 3 (issue 27): line (review band, confidence, pixel threshold, min area, ROI; absent: LineRules' meaning of None)
BANK_FORMAT_VERSION = 1  # the bank directory: .npy arrays listed with their sha256 in "files"
MANIFEST = "manifest.json"
REBUILD = "rebuild the banks with `exdd offline build DATASET --out DIR`"

# The reweighting needs k-1 >= 1 neighbours of m*: with k = 1 q is 0, s+ is 0 and every exdd score is s-/eps.
MIN_K = 2


class BankError(ValueError):
    """A bank directory that cannot be used: missing, corrupt, or made for other features."""


class ManifestError(BankError):
    """A bank manifest with a malformed, unknown or missing field; the message names the file and the field."""


def check_k(k: Any, name: str) -> int:
    """k as an int >= MIN_K; ManifestError naming name ('FILE: k') otherwise."""
    if isinstance(k, bool) or not isinstance(k, int) or k < MIN_K:
        raise ManifestError(
            f"{name} = {k!r}: the neighbourhood size of the reweighting must be an integer "
            f">= {MIN_K} (k = 1 leaves no neighbours and makes every exdd score s_neg / eps)"
        )
    return k


def check_mode(value: Any, name: str) -> str:
    """A registered scoring mode (the registry names the choices)."""
    if not isinstance(value, str) or value not in MODE_REGISTRY:
        raise ManifestError(
            f"{name}: unknown scoring mode {value!r}: expected one of {', '.join(MODE_REGISTRY)} "
            f"(a mode since removed? {REBUILD} --mode ...)"
        )
    return value


def safe_name(name: Any, where: str) -> str:
    """A manifest file entry must be a plain file name inside the bank directory."""
    if (
        not isinstance(name, str)
        or not name
        or name != os.path.basename(name)
        or name in (".", "..")
        or "\\" in name
        or "\x00" in name
    ):
        raise BankError(f"{where}: file entry {name!r} is not a plain file name inside the bank directory")
    return name


if typing.TYPE_CHECKING:  # to a type checker the checked scalars are their base types (checked when parsed)
    K = int
    ModeName = str
    FileName = str
else:
    K, ModeName, FileName = NewType("K", int), NewType("ModeName", str), NewType("FileName", str)
SCALARS.update({K: check_k, ModeName: check_mode, FileName: safe_name})


# ---- the sections ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry(Record):
    """One array file of the bank directory: its sha256, shape and dtype (verified on load)."""

    sha256: Name
    shape: Tuple[int, ...]
    dtype: Name


@dataclass(frozen=True)
class Thresholds(Record):
    """The calibrated decision thresholds per mode (score >= value is a defect); no values: uncalibrated."""

    rule: Name = "f1"
    target_fpr: Finite = 0.01
    values: Mapping[str, Finite] = field(default_factory=dict)
    detail: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # calibrate.threshold's record per mode
    calibrated: Optional[Mapping[str, Any]] = None  # set by update's recalibration


@dataclass(frozen=True)
class Fusion(Record):
    """The fusion mode's logistic model (fusion.fit_fusion): standardisation, coefficients, intercept; also the
    image head's, with its cross-validation record."""

    mean: Tuple[Finite, ...]
    scale: Tuple[Finite, ...]
    coef: Tuple[Finite, ...]
    intercept: Finite
    features: Tuple[str, ...] = ()
    fitted: bool = True
    note: Optional[str] = None
    l2: Optional[float] = None
    heldout: Optional[Mapping[str, int]] = None  # {'normal', 'defective'} images it was fitted on
    cv_auroc: Optional[float] = None  # the image head: cross-validated AUROC of the model
    fallback_cv_auroc: Optional[float] = None  # ... and of its fixed fallback on the same images
    folds: Optional[int] = None  # ... cross-validation folds (also the cross-fit folds)
    crossfit: Optional[int] = None  # ... defective training images scored by a fold's positive bank

    def check(self, at) -> None:
        if not len(self.mean) == len(self.scale) == len(self.coef) >= 1:
            raise RecordError(
                f"{at('mean')}, scale and coef must be lists of one length, got "
                f"{len(self.mean)}, {len(self.scale)}, {len(self.coef)}"
            )
        if any(s == 0 for s in self.scale):
            fail(at("scale"), "non-zero numbers", list(self.scale))
        if self.heldout is not None:
            json_object(self.heldout, at("heldout"), ("normal", "defective"))


@dataclass(frozen=True)
class Scoring(Record):
    """The scoring parameters the modes read: gamma of dual, the fitted fusion (None: its fixed fallback), the top-k
    fraction of the top-k modes, the image head (None: its fixed fallback)."""

    gamma: Finite = DEFAULT_GAMMA
    fusion: Optional[Fusion] = None
    topk: Finite = TOPK_FRACTION
    head: Optional[Fusion] = None

    def check(self, at) -> None:
        if not 0.0 < self.topk <= 1.0:
            fail(at("topk"), "a fraction in (0, 1]", self.topk)

    def params(self) -> Dict[str, Any]:
        """The scorer's Evidence parameters {'gamma', 'fusion', 'topk', 'head' (dicts or None)}; also the JSON form."""
        return {f.name: dump(getattr(self, f.name)) for f in fields(self)}

    to_dict = params


@dataclass(frozen=True)
class IndexFile(Record):
    """One bank's approximate-search index file: its sha256, efSearch, and the vectors it indexes (sha256, count)."""

    file: str
    sha256: str
    vectors_sha256: str
    size: int
    ef_search: Optional[Positive] = None


@dataclass(frozen=True)
class IndexEntry(Record):
    """The repository's nearest-neighbour index (exdd_scoring.ann): kind, min bank size, parameters, files per bank."""

    kind: Name
    min_size: int = 0
    params: Mapping[str, int] = field(default_factory=dict)
    files: Mapping[str, IndexFile] = field(default_factory=dict)


# ---- the manifest ----------------------------------------------------------------------------------------------


def upgrade(data: Any, where: str) -> Dict[str, Any]:
    """A parsed manifest.json of any version up to MANIFEST_VERSION as a current-version dict (what an older
    version left out filled with its documented meaning); ManifestError for a newer version or a non-object."""
    if not isinstance(data, Mapping):
        raise ManifestError(f"{where}: expected a JSON object (a bank manifest), got {type(data).__name__}")
    try:
        version = SCALARS[int](data.get("version", 0), f"{where}: version")
    except RecordError as e:
        raise ManifestError(str(e)) from None
    if version > MANIFEST_VERSION:
        raise ManifestError(
            f"{where}: manifest version {version} was written by a newer exdd (this one reads "
            f"versions up to {MANIFEST_VERSION}): upgrade exdd, or {REBUILD}"
        )
    d = dict(data, version=MANIFEST_VERSION)
    if version < 1:  # untyped: a null section meant absent; before 2026-11-29 no scoring (dual's gamma 1)
        d = {k: v for k, v in d.items() if v is not None or k not in ("threshold", "scoring")}
        d.setdefault("scoring", {"gamma": DEFAULT_GAMMA})
    if version < 2 and isinstance(d.get("scoring"), Mapping):  # issue 25: the top-k fraction and the image head
        d["scoring"] = {"topk": TOPK_FRACTION, "head": None, **d["scoring"]}
    return d


Provenance = Optional[Mapping[str, Any]]  # a JSON object no served scorer reads (provenance.py types it)


@dataclass(frozen=True)
class BankManifest(Record):
    """manifest.json of a bank directory: features, k, the served defaults, calibration, provenance, file checksums."""

    features: FeatureSpec
    k: K
    default_mode: ModeName = DEFAULT_MODE
    modes: Tuple[str, ...] = ()  # the modes registered when the banks were built
    threshold: Thresholds = field(default_factory=Thresholds)
    scoring: Scoring = field(default_factory=Scoring)
    coreset: Provenance = None  # the coreset settings and bank statistics
    defect_patch_rule: Provenance = None
    sources: Provenance = None  # what the banks were built from
    weights_note: str = ""  # e.g. a random-init backbone: scores not meaningful
    created: str = ""  # ISO time (UTC) of the build or update
    tool: str = ""  # 'exdd VERSION' that wrote it
    parent: Provenance = None  # set by offline update
    updates: Tuple[Mapping[str, Any], ...] = ()  # the update history of this lineage, oldest first
    index: Optional[IndexEntry] = None  # set by `export repository --index` on the copied banks
    line: Optional[LineRules] = None  # issue 27: review band, confidence, regions, ROI (None: before)
    files: Mapping[FileName, FileEntry] = field(default_factory=dict)  # set by save_bank
    format_version: int = BANK_FORMAT_VERSION
    version: int = MANIFEST_VERSION  # as read (0: no version key); to_dict writes the current one

    def __post_init__(self) -> None:
        """Fields set in code must hold their declared types (parsed ones do by construction)."""
        for f in fields(self):
            tp, opt = optional(field_types(type(self))[f.name])
            value, want = getattr(self, f.name), typing.get_origin(tp) or tp
            if want is tuple:
                object.__setattr__(self, f.name, tuple(value))
            elif isinstance(want, type) and not (value is None and opt) and not isinstance(value, want):
                raise ManifestError(
                    f"bank manifest: {f.name} must be a {want.__name__}{' or None' if opt else ''}, "
                    f"got {type(value).__name__}"
                )
        check_k(self.k, "bank manifest: k")
        check_mode(self.default_mode, "bank manifest: default_mode")
        for name in self.files:
            safe_name(name, "bank manifest")

    @classmethod
    def from_dict(cls, data: Any, where: str = "bank manifest", path: str = "") -> "BankManifest":
        """The manifest of a parsed manifest.json (or an in-memory dict of one); ManifestError naming where and the
        field."""
        if isinstance(data, cls):
            return data
        if isinstance(data, BankManifest):  # read as the other kind (OfflineManifest <-> BankManifest)
            data = {**data.to_dict(), "version": data.version}
        try:
            return super().from_dict({**upgrade(data, where), "version": data.get("version", 0)}, where, path)
        except (RecordError, SpecError) as e:
            raise ManifestError(str(e)) from None

    @classmethod
    def from_json(cls, text: str, where: str = "bank manifest") -> "BankManifest":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ManifestError(f"{where}: not JSON ({e})") from None
        return cls.from_dict(data, where)

    @classmethod
    def read(cls, path: str) -> "BankManifest":
        """The manifest of a manifest.json file; ManifestError naming the file (and the field)."""
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise ManifestError(f"{path}: unreadable manifest ({e})") from None
        return cls.from_json(text, path)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form: the fields (None ones and an empty update history left out), version the current one."""
        out = {**super().to_dict(), "version": MANIFEST_VERSION}
        if not self.updates:
            del out["updates"]
        return out

    def to_json(self) -> str:
        """manifest.json's text (indented, sorted keys: what save_bank writes)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def write(self, path: str) -> None:
        """Write manifest.json (via a temporary file renamed over it, so readers never see half a manifest)."""
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(self.to_json())
        os.replace(tmp, path)

    @property
    def thresholds(self) -> Dict[str, float]:
        """{mode: calibrated threshold} (empty when uncalibrated): the one way to read a threshold."""
        return dict(self.threshold.values)
