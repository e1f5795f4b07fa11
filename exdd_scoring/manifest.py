"""``BankManifest``: the typed, validated, versioned ``manifest.json`` of a bank directory, defined once.

Built by ``exdd offline build``, evolved by ``exdd offline update`` (``dataclasses.replace``, the
parent recorded), read as attributes by the scorer, repository assembly, deploy and the CLI. On disk
it keeps the JSON keys of the untyped manifest it replaces, plus ``version`` (this schema's number).

Rules (each one names the file and the field when broken):

- A present field of the wrong type or range is an error, never a silent default (a threshold
  that is not a number refuses the banks instead of serving no threshold).
- Unknown keys are refused at every typed level: exdd is the only writer, so an unknown key is a
  typo or a hand edit (``treshold``) whose intent would otherwise be dropped without a word; a
  later exdd that adds a key raises ``version``, which this one refuses with how to proceed.
  The free-form parts (the calibration ``detail`` per mode, ``threshold.calibrated``) stay mappings.
- Required: ``features`` and ``k`` (and, in a bank directory, ``format_version`` and ``files``).
  Every other field has a documented meaning when absent, the one the readers gave it before:
  ``default_mode`` absent -> ``DEFAULT_MODE``; ``threshold`` absent -> uncalibrated (no values, as
  ``--holdout 0`` writes); ``scoring`` absent (manifests built before 2026-11-29, when dual/fusion
  came) -> gamma ``DEFAULT_GAMMA`` and the fusion's fixed fallback; ``scoring.topk`` / ``scoring.head`` absent
  (before version 2, issue 25) -> ``TOPK_FRACTION`` and the image head's fixed fallback; ``coreset``, ``sources``,
  ``defect_patch_rule`` absent -> None (provenance; ``offline update`` refuses a parent without coreset).
  A ``default_mode`` no longer registered (``exdd_peak``, removed 2026-11-29) is refused, saying to rebuild.
  ``features.projection`` absent -> 'random' (every bank before issue 25); a fitted projection's matrix is
  the ``files`` entry ``projection.npy`` (bank.py), so no new key and no new ``version``: an older exdd reads
  such a manifest but no random extractor matches its ``projection_sha256``.
- ``version``: absent = 0 (written by exdd before this schema; loads by the rules above). Larger
  than ``MANIFEST_VERSION``: refused, saying to upgrade exdd or rebuild with ``exdd offline build``.
  ``to_dict`` always writes the current ``MANIFEST_VERSION`` (the ``version`` attribute says what
  the manifest was read as).

numpy-free and standard library only (the package is copied into Triton model repositories).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

from .scores import DEFAULT_GAMMA, DEFAULT_MODE, MODE_REGISTRY, TOPK_FRACTION
from .spec import FeatureSpec, SpecError

MANIFEST_VERSION = 3          # this schema; manifests without "version" are version 0 (untyped, before it)
# 2 (issue 25): sources.heldout_rule and heldout_fraction (the hold-out chosen by content hash; absent = the seeded
#    listing-order rule, fraction unrecorded); scoring.topk and scoring.head (absent -> TOPK_FRACTION, fallback)
# 3 (issue 27): line (review band, confidence, pixel threshold, min area, ROI; absent -> LineRules' meaning of None)
BANK_FORMAT_VERSION = 1       # the bank directory: .npy arrays listed with their sha256 in "files"
MANIFEST = "manifest.json"
REBUILD = "rebuild the banks with `exdd offline build DATASET --out DIR`"

# The reweighting needs k-1 >= 1 neighbours of m*: with k = 1 q is 0, s+ is 0 and every exdd score is s-/eps.
MIN_K = 2


class BankError(ValueError):
    """A bank directory that cannot be used: missing, corrupt, or made for other features."""


class ManifestError(BankError):
    """A bank manifest with a malformed, unknown or missing field; the message names the file and the field."""


# ---- field checks: each takes the value and 'FILE: field.path', returns the typed value or raises ---------------

def _at(where: str, path: str, key: str) -> str:
    """'where: path.key' (path empty at the top level)."""
    return f"{where}: {path + '.' if path else ''}{key}"


def _fail(name: str, want: str, value: Any) -> None:
    raise ManifestError(f"{name} must be {want}, got {value!r}")


def _obj(value: Any, name: str, known: Iterable[str], required: Iterable[str] = ()) -> Mapping[str, Any]:
    """value as a JSON object with only known keys and every required one."""
    if not isinstance(value, Mapping):
        raise ManifestError(f"{name} must be a JSON object, got {type(value).__name__} {value!r}")
    known = tuple(known)
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise ManifestError(f"{name}: unknown key(s) {', '.join(map(repr, unknown))} (known: {', '.join(known)}); "
                            f"a typo or a hand edit? exdd writes only these")
    missing = [k for k in required if k not in value]
    if missing:
        raise ManifestError(f"{name}: missing {', '.join(map(repr, missing))}")
    return value


def _map(value: Any, name: str) -> Mapping[str, Any]:
    """value as a JSON object of any keys (the free-form parts)."""
    if not isinstance(value, Mapping):
        raise ManifestError(f"{name} must be a JSON object, got {type(value).__name__} {value!r}")
    return value


def _mode(value: Any, name: str) -> str:
    """A registered scoring mode (the registry names the choices)."""
    if not isinstance(value, str) or value not in MODE_REGISTRY:
        raise ManifestError(f"{name}: unknown scoring mode {value!r}: expected one of {', '.join(MODE_REGISTRY)} "
                            f"(a mode since removed? {REBUILD} --mode ...)")
    return value


def _int(value: Any, name: str, minimum: Optional[int] = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        _fail(name, "an integer" + (f" >= {minimum}" if minimum is not None else ""), value)
    return int(value)


def _num(value: Any, name: str, finite: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
            or (finite and math.isinf(value)):
        _fail(name, "a finite number" if finite else "a number", value)
    return float(value)


def _str(value: Any, name: str, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value):
        _fail(name, "a string" if empty else "a non-empty string", value)
    return value


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        _fail(name, "true or false", value)
    return value


def _list(value: Any, name: str) -> Sequence[Any]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        _fail(name, "a JSON list", value)
    return value


def _strs(value: Any, name: str) -> Tuple[str, ...]:
    return tuple(_str(v, f"{name}[{i}]") for i, v in enumerate(_list(value, name)))


def _nums(value: Any, name: str, n: Optional[int] = None) -> Tuple[float, ...]:
    out = tuple(_num(v, f"{name}[{i}]", finite=True) for i, v in enumerate(_list(value, name)))
    if n is not None and len(out) != n:
        _fail(name, f"a list of {n} numbers", value)
    return out


def _opt(check, value: Any, name: str, *args: Any) -> Any:
    """check(value, name, ...) unless value is None (JSON null)."""
    return None if value is None else check(value, name, *args)


def _errors(value: Any, name: str) -> Tuple[Tuple[str, str], ...]:
    """[{'path', 'error'}, ...] as ((path, error), ...)."""
    out = []
    for i, e in enumerate(_list(value, name)):
        e = _obj(e, f"{name}[{i}]", ("path", "error"), ("path", "error"))
        out.append((_str(e["path"], f"{name}[{i}].path"), _str(e["error"], f"{name}[{i}].error")))
    return tuple(out)


def _errors_json(errors: Sequence[Tuple[str, str]]) -> list:
    return [{"path": p, "error": e} for p, e in errors]


def safe_name(name: Any, where: str) -> str:
    """A manifest file entry must be a plain file name inside the bank directory."""
    if not isinstance(name, str) or not name or name != os.path.basename(name) or name in (".", "..") \
            or "\\" in name or "\x00" in name:
        raise BankError(f"{where}: file entry {name!r} is not a plain file name inside the bank directory")
    return name


def check_k(k: Any, where: str) -> int:
    """k as an int >= MIN_K; BankError naming where otherwise."""
    if isinstance(k, bool) or not isinstance(k, int) or k < MIN_K:
        raise ManifestError(f"{where}: k = {k!r}: the neighbourhood size of the reweighting must be an integer "
                            f">= {MIN_K} (k = 1 leaves no neighbours and makes every exdd score s_neg / eps)")
    return k


def _drop_none(d: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


# ---- the sections ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FileEntry:
    """One array file of the bank directory: its sha256, shape and dtype (verified on load)."""
    sha256: str
    shape: Tuple[int, ...]
    dtype: str

    @classmethod
    def from_dict(cls, d: Any, where: str, path: str) -> "FileEntry":
        d = _obj(d, f"{where}: {path}", ("sha256", "shape", "dtype"), ("sha256", "shape", "dtype"))
        shape = tuple(_int(v, _at(where, path, f"shape[{i}]")) for i, v in enumerate(_list(d["shape"], _at(where, path, "shape"))))
        return cls(_str(d["sha256"], _at(where, path, "sha256"), empty=False), shape,
                   _str(d["dtype"], _at(where, path, "dtype"), empty=False))

    def to_dict(self) -> Dict[str, Any]:
        return {"sha256": self.sha256, "shape": list(self.shape), "dtype": self.dtype}


_STATS_INT = ("patches", "size", "min_size", "added_patches", "picked")
_STATS_NUM = ("ratio", "radius", "added_radius")
_STATS_BOOL = ("radius_is_upper_bound", "added_radius_is_bound")
_STATS_STR = ("coreset", "added_method")


@dataclass(frozen=True)
class BankStats:
    """A bank's coreset statistics: patches seen, size kept, the size rule, the coverage radius; update adds added_*."""
    patches: int
    size: int
    ratio: Optional[float] = None
    min_size: Optional[int] = None
    coreset: Optional[str] = None              # the coreset method
    radius: Optional[float] = None
    radius_is_upper_bound: Optional[bool] = None
    added_patches: Optional[int] = None        # the last update: new patches, picked rows, their radius and method
    picked: Optional[int] = None
    added_radius: Optional[float] = None
    added_radius_is_bound: Optional[bool] = None
    added_method: Optional[str] = None

    @classmethod
    def from_dict(cls, d: Any, where: str, path: str) -> "BankStats":
        if isinstance(d, BankStats):
            return d
        d = _obj(d, f"{where}: {path}", [f.name for f in fields(cls)], ("patches", "size"))
        kw: Dict[str, Any] = {}
        for k, v in d.items():
            name = _at(where, path, k)
            kw[k] = (_int(v, name) if k in _STATS_INT else _num(v, name) if k in _STATS_NUM
                     else _opt(_bool, v, name) if k in _STATS_BOOL else _opt(_str, v, name))
        return cls(**kw)

    def to_dict(self) -> Dict[str, Any]:
        return _drop_none({f.name: getattr(self, f.name) for f in fields(self)})


@dataclass(frozen=True)
class CoresetInfo:
    """Both banks' statistics and the coreset settings (seed, chunk rows, oversampling)."""
    negative: BankStats
    positive: BankStats
    seed: int = 0
    chunk_rows: Optional[int] = None
    oversample: Optional[float] = None

    @classmethod
    def from_dict(cls, d: Any, where: str, path: str = "coreset") -> "CoresetInfo":
        d = _obj(d, f"{where}: {path}", ("negative", "positive", "seed", "chunk_rows", "oversample"),
                 ("negative", "positive", "seed"))
        return cls(BankStats.from_dict(d["negative"], where, f"{path}.negative"),
                   BankStats.from_dict(d["positive"], where, f"{path}.positive"),
                   _int(d["seed"], _at(where, path, "seed"), None),
                   _opt(_int, d.get("chunk_rows"), _at(where, path, "chunk_rows"), 1),
                   _opt(_num, d.get("oversample"), _at(where, path, "oversample")))

    def to_dict(self) -> Dict[str, Any]:
        return _drop_none({"negative": self.negative.to_dict(), "positive": self.positive.to_dict(), "seed": self.seed,
                           "chunk_rows": self.chunk_rows, "oversample": self.oversample})


@dataclass(frozen=True)
class DefectPatchRule:
    """Which patches of a defective image are defect patches (cell coverage by the mask >= min_cover)."""
    min_cover: float
    rule: str = ""

    @classmethod
    def from_dict(cls, d: Any, where: str, path: str = "defect_patch_rule") -> "DefectPatchRule":
        d = _obj(d, f"{where}: {path}", ("min_cover", "rule"), ("min_cover",))
        mc = _num(d["min_cover"], _at(where, path, "min_cover"), finite=True)
        if not 0.0 <= mc <= 1.0:
            _fail(_at(where, path, "min_cover"), "a fraction in [0, 1]", d["min_cover"])
        return cls(mc, _str(d.get("rule", ""), _at(where, path, "rule")))

    def to_dict(self) -> Dict[str, Any]:
        return {"min_cover": self.min_cover, "rule": self.rule}


@dataclass(frozen=True)
class Sources:
    """What the banks were built from: the dataset, image counts, synthetic folders, held-out split, unreadable files."""
    dataset: str
    normal_images: int = 0
    defect_images: int = 0
    synthetic_images: int = 0
    synthetic_dirs: Tuple[str, ...] = ()
    heldout_normal: Optional[int] = None
    heldout_defect: Optional[int] = None
    unreadable: Tuple[Tuple[str, str], ...] = ()    # (path, error)
    heldout_rule: Optional[str] = None              # how the held-out images were chosen; None: before issue 25
    heldout_fraction: Optional[float] = None        # the build's --holdout; None: before issue 25

    @classmethod
    def from_dict(cls, d: Any, where: str, path: str = "sources") -> "Sources":
        d = _obj(d, f"{where}: {path}", [f.name for f in fields(cls)], ("dataset",))
        n = lambda k: _at(where, path, k)  # noqa: E731
        return cls(_str(d["dataset"], n("dataset")),
                   *(_int(d.get(k, 0), n(k)) for k in ("normal_images", "defect_images", "synthetic_images")),
                   _strs(d.get("synthetic_dirs", []), n("synthetic_dirs")),
                   _opt(_int, d.get("heldout_normal"), n("heldout_normal")),
                   _opt(_int, d.get("heldout_defect"), n("heldout_defect")),
                   _errors(d.get("unreadable", []), n("unreadable")),
                   _opt(_str, d.get("heldout_rule"), n("heldout_rule")),
                   _opt(_num, d.get("heldout_fraction"), n("heldout_fraction")))

    def to_dict(self) -> Dict[str, Any]:
        return _drop_none({"dataset": self.dataset, "normal_images": self.normal_images,
                           "defect_images": self.defect_images, "synthetic_images": self.synthetic_images,
                           "synthetic_dirs": list(self.synthetic_dirs), "heldout_normal": self.heldout_normal,
                           "heldout_defect": self.heldout_defect, "unreadable": _errors_json(self.unreadable),
                           "heldout_rule": self.heldout_rule, "heldout_fraction": self.heldout_fraction})


@dataclass(frozen=True)
class Thresholds:
    """The calibrated decision thresholds per mode (score >= value is a defect); no values: uncalibrated."""
    rule: str = "f1"
    target_fpr: float = 0.01
    values: Mapping[str, float] = field(default_factory=dict)
    detail: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)   # calibrate.threshold's record per mode
    calibrated: Optional[Mapping[str, Any]] = None                          # set by update's recalibration

    @classmethod
    def from_dict(cls, d: Any, where: str, path: str = "threshold") -> "Thresholds":
        d = _obj(d, f"{where}: {path}", ("rule", "target_fpr", "values", "detail", "calibrated"))
        values = _map(d.get("values", {}), _at(where, path, "values"))
        detail = _map(d.get("detail", {}), _at(where, path, "detail"))
        for m, v in detail.items():
            _map(v, _at(where, path, f"detail.{m}"))
        if d.get("calibrated") is not None:
            _map(d["calibrated"], _at(where, path, "calibrated"))
        return cls(_str(d.get("rule", "f1"), _at(where, path, "rule"), empty=False),
                   _num(d.get("target_fpr", 0.01), _at(where, path, "target_fpr"), finite=True),
                   {str(m): _num(v, _at(where, path, f"values.{m}"), finite=True) for m, v in values.items()},
                   {str(m): dict(v) for m, v in detail.items()},
                   None if d.get("calibrated") is None else dict(d["calibrated"]))

    def value(self, mode: str) -> Optional[float]:
        """The calibrated threshold of mode, None when not calibrated."""
        return self.values.get(mode)

    def to_dict(self) -> Dict[str, Any]:
        return _drop_none({"rule": self.rule, "target_fpr": self.target_fpr, "values": dict(self.values),
                           "detail": {m: dict(v) for m, v in self.detail.items()},
                           "calibrated": None if self.calibrated is None else dict(self.calibrated)})


@dataclass(frozen=True)
class Fusion:
    """The fusion mode's logistic model (fusion.fit_fusion): standardisation, coefficients, intercept."""
    mean: Tuple[float, ...]
    scale: Tuple[float, ...]
    coef: Tuple[float, ...]
    intercept: float
    features: Tuple[str, ...] = ()
    fitted: bool = True
    note: Optional[str] = None
    l2: Optional[float] = None
    heldout: Optional[Mapping[str, int]] = None     # {'normal', 'defective'} images it was fitted on
    cv_auroc: Optional[float] = None                # the image head: cross-validated AUROC of the model
    fallback_cv_auroc: Optional[float] = None       # ... and of its fixed fallback on the same images
    folds: Optional[int] = None                     # ... cross-validation folds (also the cross-fit folds)
    crossfit: Optional[int] = None                  # ... defective training images scored by a fold's positive bank

    @classmethod
    def from_dict(cls, d: Any, where: str, path: str = "scoring.fusion") -> "Fusion":
        if isinstance(d, Fusion):
            return d
        d = _obj(d, f"{where}: {path}", [f.name for f in fields(cls)], ("mean", "scale", "coef", "intercept"))
        n = lambda k: _at(where, path, k)  # noqa: E731
        mean, scale, coef = (_nums(d[k], n(k)) for k in ("mean", "scale", "coef"))
        if not len(mean) == len(scale) == len(coef) >= 1:
            raise ManifestError(f"{n('mean')}, scale and coef must be lists of one length, got "
                                f"{len(mean)}, {len(scale)}, {len(coef)}")
        if any(s == 0 for s in scale):
            _fail(n("scale"), "non-zero numbers", d["scale"])
        heldout = None
        if d.get("heldout") is not None:
            h = _obj(d["heldout"], n("heldout"), ("normal", "defective"))
            heldout = {k: _int(v, n(f"heldout.{k}")) for k, v in h.items()}
        return cls(mean, scale, coef, _num(d["intercept"], n("intercept"), finite=True),
                   _strs(d.get("features", []), n("features")), _bool(d.get("fitted", True), n("fitted")),
                   _opt(_str, d.get("note"), n("note")), _opt(_num, d.get("l2"), n("l2")), heldout,
                   _opt(_num, d.get("cv_auroc"), n("cv_auroc")), _opt(_num, d.get("fallback_cv_auroc"),
                                                                    n("fallback_cv_auroc")),
                   _opt(_int, d.get("folds"), n("folds")), _opt(_int, d.get("crossfit"), n("crossfit")))

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form, also the parameters fusion.fusion_score reads."""
        return _drop_none({"features": list(self.features), "mean": list(self.mean), "scale": list(self.scale),
                           "coef": list(self.coef), "intercept": self.intercept, "fitted": self.fitted,
                           "note": self.note, "l2": self.l2,
                           "heldout": None if self.heldout is None else dict(self.heldout),
                           "cv_auroc": self.cv_auroc, "fallback_cv_auroc": self.fallback_cv_auroc,
                           "folds": self.folds, "crossfit": self.crossfit})


@dataclass(frozen=True)
class Scoring:
    """The scoring parameters the modes read: gamma of dual, the fitted fusion (None: its fixed fallback), the top-k
    fraction of the top-k modes, the image head (None: its fixed fallback; manifests before version 2 have neither)."""
    gamma: float = DEFAULT_GAMMA
    fusion: Optional[Fusion] = None
    topk: float = TOPK_FRACTION
    head: Optional[Fusion] = None

    @classmethod
    def from_dict(cls, d: Any, where: str, path: str = "scoring") -> "Scoring":
        d = _obj(d, f"{where}: {path}", ("gamma", "fusion", "topk", "head"))
        gamma = _num(d.get("gamma", DEFAULT_GAMMA), _at(where, path, "gamma"), finite=True)
        topk = _num(d.get("topk", TOPK_FRACTION), _at(where, path, "topk"), finite=True)
        if not 0.0 < topk <= 1.0:
            _fail(_at(where, path, "topk"), "a fraction in (0, 1]", d["topk"])
        sub = lambda k: None if d.get(k) is None else Fusion.from_dict(d[k], where, f"{path}.{k}")  # noqa: E731
        return cls(gamma, sub("fusion"), topk, sub("head"))

    def params(self) -> Dict[str, Any]:
        """The scorer's Evidence parameters {'gamma', 'fusion', 'topk', 'head' (dicts or None)}."""
        return {"gamma": self.gamma, "fusion": None if self.fusion is None else self.fusion.to_dict(),
                "topk": self.topk, "head": None if self.head is None else self.head.to_dict()}

    def to_dict(self) -> Dict[str, Any]:
        return self.params()


@dataclass(frozen=True)
class Parent:
    """The bank directory an update grew from: its path and the sha256 of its manifest.json."""
    path: str
    manifest_sha256: str

    @classmethod
    def from_dict(cls, d: Any, where: str, path: str = "parent") -> "Parent":
        d = _obj(d, f"{where}: {path}", ("path", "manifest_sha256"), ("path", "manifest_sha256"))
        return cls(_str(d["path"], _at(where, path, "path"), empty=False),
                   _str(d["manifest_sha256"], _at(where, path, "manifest_sha256"), empty=False))

    def to_dict(self) -> Dict[str, Any]:
        return {"path": self.path, "manifest_sha256": self.manifest_sha256}


@dataclass(frozen=True)
class SizeChange:
    """A bank's size before and after an update."""
    size_before: int
    size_after: int

    @classmethod
    def from_dict(cls, d: Any, where: str, path: str) -> "SizeChange":
        d = _obj(d, f"{where}: {path}", ("size_before", "size_after"), ("size_before", "size_after"))
        return cls(_int(d["size_before"], _at(where, path, "size_before")),
                   _int(d["size_after"], _at(where, path, "size_after")))

    def to_dict(self) -> Dict[str, Any]:
        return {"size_before": self.size_before, "size_after": self.size_after}


@dataclass(frozen=True)
class UpdateRecord:
    """One ``offline update``: when, from which parent, the images added, bank growth, thresholds, skipped files."""
    at: str
    parent: Parent
    added_normal: Tuple[str, ...]
    added_defect: Tuple[str, ...]
    negative: SizeChange
    positive: SizeChange
    threshold: str                                  # 'kept from the parent' or 'recalibrated on N images'
    errors: Tuple[Tuple[str, str], ...] = ()
    note: str = ""
    tool: str = ""

    @classmethod
    def from_dict(cls, d: Any, where: str, path: str) -> "UpdateRecord":
        keys = ("at", "parent", "added", "negative", "positive", "threshold", "errors", "note", "tool")
        d = _obj(d, f"{where}: {path}", keys, keys[:6])
        n = lambda k: _at(where, path, k)  # noqa: E731
        added = _obj(d["added"], n("added"), ("normal", "defect"))
        return cls(_str(d["at"], n("at")), Parent.from_dict(d["parent"], where, f"{path}.parent"),
                   _strs(added.get("normal", []), n("added.normal")), _strs(added.get("defect", []), n("added.defect")),
                   SizeChange.from_dict(d["negative"], where, f"{path}.negative"),
                   SizeChange.from_dict(d["positive"], where, f"{path}.positive"),
                   _str(d["threshold"], n("threshold")), _errors(d.get("errors", []), n("errors")),
                   _str(d.get("note", ""), n("note")), _str(d.get("tool", ""), n("tool")))

    def to_dict(self) -> Dict[str, Any]:
        return {"at": self.at, "parent": self.parent.to_dict(),
                "added": {"normal": list(self.added_normal), "defect": list(self.added_defect)},
                "negative": self.negative.to_dict(), "positive": self.positive.to_dict(), "threshold": self.threshold,
                "errors": _errors_json(self.errors), "note": self.note, "tool": self.tool}


@dataclass(frozen=True)
class IndexFile:
    """One bank's approximate-search index file: its sha256, efSearch, and the vectors it indexes (sha256, count)."""
    file: str
    sha256: str
    vectors_sha256: str
    size: int
    ef_search: Optional[int] = None

    @classmethod
    def from_dict(cls, d: Any, where: str, path: str) -> "IndexFile":
        d = _obj(d, f"{where}: {path}", ("file", "sha256", "ef_search", "vectors_sha256", "size"),
                 ("file", "sha256", "vectors_sha256", "size"))
        n = lambda k: _at(where, path, k)  # noqa: E731
        return cls(_str(d["file"], n("file")), _str(d["sha256"], n("sha256")), _str(d["vectors_sha256"], n("vectors_sha256")),
                   _int(d["size"], n("size")), _opt(_int, d.get("ef_search"), n("ef_search"), 1))

    def to_dict(self) -> Dict[str, Any]:
        return _drop_none({"file": self.file, "sha256": self.sha256, "ef_search": self.ef_search,
                           "vectors_sha256": self.vectors_sha256, "size": self.size})


@dataclass(frozen=True)
class IndexEntry:
    """The repository's nearest-neighbour index (exdd_scoring.ann): kind, min bank size, parameters, files per bank."""
    kind: str
    min_size: int = 0
    params: Mapping[str, int] = field(default_factory=dict)
    files: Mapping[str, IndexFile] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str, path: str = "index") -> "IndexEntry":
        if isinstance(d, IndexEntry):
            return d
        d = _obj(d, f"{where}: {path}", ("kind", "min_size", "params", "files"), ("kind",))
        params = _map(d.get("params", {}), _at(where, path, "params"))
        files = _map(d.get("files", {}), _at(where, path, "files"))
        return cls(_str(d["kind"], _at(where, path, "kind"), empty=False),
                   _int(d.get("min_size", 0), _at(where, path, "min_size")),
                   {str(k): _int(v, _at(where, path, f"params.{k}")) for k, v in params.items()},
                   {str(k): IndexFile.from_dict(v, where, f"{path}.files.{k}") for k, v in files.items()})

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "min_size": self.min_size, "params": dict(self.params),
                "files": {k: v.to_dict() for k, v in self.files.items()}}


@dataclass(frozen=True)
class ReviewBand:
    """One mode's review band (issue 27, offline/calibrate.review_band): ok below ok_below (T1), defect at or above
    defect_above (T2), review between; detail is the calibration's record (rates, held-out counts)."""
    ok_below: float
    defect_above: float
    detail: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str, path: str) -> "ReviewBand":
        d = _obj(d, f"{where}: {path}", ("ok_below", "defect_above", "detail"), ("ok_below", "defect_above"))
        t1 = _num(d["ok_below"], _at(where, path, "ok_below"), finite=True)
        t2 = _num(d["defect_above"], _at(where, path, "defect_above"), finite=True)
        if t1 > t2:
            _fail(_at(where, path, "ok_below"), f"at most defect_above ({t2})", t1)
        return cls(t1, t2, dict(_map(d.get("detail", {}), _at(where, path, "detail"))))

    def to_dict(self) -> Dict[str, Any]:
        return {"ok_below": self.ok_below, "defect_above": self.defect_above, "detail": dict(self.detail)}


@dataclass(frozen=True)
class Confidence:
    """One mode's confidence model (verdict.confidence): P(defect) = sigmoid((asinh(score) - mean) / scale x coef
    + intercept), fitted on the hold-out (offline/calibrate.fit_confidence)."""
    mean: float
    scale: float
    coef: float
    intercept: float
    transform: str = "asinh"
    heldout: Optional[Mapping[str, int]] = None

    @classmethod
    def from_dict(cls, d: Any, where: str, path: str) -> "Confidence":
        keys = ("mean", "scale", "coef", "intercept", "transform", "heldout")
        d = _obj(d, f"{where}: {path}", keys, keys[:4])
        n = lambda k: _at(where, path, k)  # noqa: E731
        mean, scale, coef, icpt = (_num(d[k], n(k), finite=True) for k in keys[:4])
        if scale == 0:
            _fail(n("scale"), "a non-zero number", d["scale"])
        if d.get("transform", "asinh") != "asinh":
            _fail(n("transform"), "'asinh'", d["transform"])
        heldout = None
        if d.get("heldout") is not None:
            h = _obj(d["heldout"], n("heldout"), ("normal", "defective"))
            heldout = {k: _int(v, n(f"heldout.{k}")) for k, v in h.items()}
        return cls(mean, scale, coef, icpt, "asinh", heldout)

    def to_dict(self) -> Dict[str, Any]:
        return _drop_none({"mean": self.mean, "scale": self.scale, "coef": self.coef, "intercept": self.intercept,
                           "transform": self.transform, "heldout": None if self.heldout is None else dict(self.heldout)})


@dataclass(frozen=True)
class RoiInfo:
    """The region of interest the banks were built with (issue 27): the mask file as given (roi.png in the bank,
    its sha256 also in files), where it came from, and how many patches of the grid it keeps."""
    sha256: str
    source: str = ""
    patches_inside: int = 0
    patches: int = 0

    @classmethod
    def from_dict(cls, d: Any, where: str, path: str = "line.roi") -> "RoiInfo":
        d = _obj(d, f"{where}: {path}", ("sha256", "source", "patches_inside", "patches"), ("sha256",))
        return cls(_str(d["sha256"], _at(where, path, "sha256"), empty=False),
                   _str(d.get("source", ""), _at(where, path, "source")),
                   _int(d.get("patches_inside", 0), _at(where, path, "patches_inside")),
                   _int(d.get("patches", 0), _at(where, path, "patches")))

    def to_dict(self) -> Dict[str, Any]:
        return {"sha256": self.sha256, "source": self.source, "patches_inside": self.patches_inside,
                "patches": self.patches}


@dataclass(frozen=True)
class LineRules:
    """What a line operator gets from each answer (issue 27), calibrated at build time per mode: the review band,
    the confidence model, the pixel threshold of the served map (its regions give area and box), the minimum
    defect area (pixels, 0 = off), the ROI. Absent (banks before version 3): no ROI, min area 0, the band
    [T, T] (ok / defect as IS_DEFECT), confidence unknown (NaN), no regions (area 0)."""
    review: Mapping[str, ReviewBand] = field(default_factory=dict)
    confidence: Mapping[str, Confidence] = field(default_factory=dict)
    pixel_threshold: Mapping[str, float] = field(default_factory=dict)
    pixel_rule: str = ""
    min_area: int = 0
    roi: Optional[RoiInfo] = None
    classes: str = ""                               # where the defect classes came from ('' : none)

    @classmethod
    def from_dict(cls, d: Any, where: str, path: str = "line") -> "LineRules":
        keys = ("review", "confidence", "pixel_threshold", "pixel_rule", "min_area", "roi", "classes")
        d = _obj(d, f"{where}: {path}", keys)
        n = lambda k: _at(where, path, k)  # noqa: E731
        review = {str(m): ReviewBand.from_dict(v, where, f"{path}.review.{m}")
                  for m, v in _map(d.get("review", {}), n("review")).items()}
        conf = {str(m): Confidence.from_dict(v, where, f"{path}.confidence.{m}")
                for m, v in _map(d.get("confidence", {}), n("confidence")).items()}
        pix = {str(m): _num(v, n(f"pixel_threshold.{m}"), finite=True)
               for m, v in _map(d.get("pixel_threshold", {}), n("pixel_threshold")).items()}
        roi = None if d.get("roi") is None else RoiInfo.from_dict(d["roi"], where, f"{path}.roi")
        return cls(review, conf, pix, _str(d.get("pixel_rule", ""), n("pixel_rule")),
                   _int(d.get("min_area", 0), n("min_area")), roi, _str(d.get("classes", ""), n("classes")))

    def to_dict(self) -> Dict[str, Any]:
        return _drop_none({"review": {m: v.to_dict() for m, v in self.review.items()},
                           "confidence": {m: v.to_dict() for m, v in self.confidence.items()},
                           "pixel_threshold": dict(self.pixel_threshold), "pixel_rule": self.pixel_rule,
                           "min_area": self.min_area, "roi": None if self.roi is None else self.roi.to_dict(),
                           "classes": self.classes})


# ---- the manifest ----------------------------------------------------------------------------------------------

KEYS = ("version", "format_version", "features", "k", "files", "default_mode", "modes", "threshold", "scoring",
        "coreset", "defect_patch_rule", "sources", "weights_note", "created", "tool", "parent", "updates", "index",
        "line")


@dataclass(frozen=True)
class BankManifest:
    """manifest.json of a bank directory: features, k, the served defaults, calibration, provenance, file checksums."""
    features: FeatureSpec
    k: int
    default_mode: str = DEFAULT_MODE
    modes: Tuple[str, ...] = ()                     # the modes registered when the banks were built
    threshold: Thresholds = field(default_factory=Thresholds)
    scoring: Scoring = field(default_factory=Scoring)
    coreset: Optional[CoresetInfo] = None
    defect_patch_rule: Optional[DefectPatchRule] = None
    sources: Optional[Sources] = None
    weights_note: str = ""                          # e.g. a random-init backbone: scores not meaningful
    created: str = ""                               # ISO time (UTC) of the build or update
    tool: str = ""                                  # 'exdd VERSION' that wrote it
    parent: Optional[Parent] = None                 # set by offline update
    updates: Tuple[UpdateRecord, ...] = ()          # the update history of this lineage, oldest first
    index: Optional[IndexEntry] = None              # set by `export repository --index` on the copied banks
    line: Optional[LineRules] = None                # issue 27: review band, confidence, regions, ROI (None: before)
    files: Mapping[str, FileEntry] = field(default_factory=dict)   # set by save_bank
    format_version: int = BANK_FORMAT_VERSION
    version: int = MANIFEST_VERSION                 # what it was read as (0: no version key); to_dict writes the current

    def __post_init__(self) -> None:
        self.validate("bank manifest")

    def validate(self, where: str) -> None:
        """Raise ManifestError naming where and the field unless the typed fields are well formed."""
        if not isinstance(self.features, FeatureSpec):
            raise ManifestError(f"{where}: features must be a FeatureSpec, got {type(self.features).__name__}")
        check_k(self.k, where)
        _mode(self.default_mode, f"{where}: default_mode")
        for name, cls in (("threshold", Thresholds), ("scoring", Scoring)):
            if not isinstance(getattr(self, name), cls):
                raise ManifestError(f"{where}: {name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        for name, cls in (("coreset", CoresetInfo), ("defect_patch_rule", DefectPatchRule), ("sources", Sources),
                          ("parent", Parent), ("index", IndexEntry), ("line", LineRules)):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), cls):
                raise ManifestError(f"{where}: {name} must be a {cls.__name__} or None, got "
                                    f"{type(getattr(self, name)).__name__}")
        object.__setattr__(self, "modes", tuple(self.modes))
        object.__setattr__(self, "updates", tuple(self.updates))
        for name in self.files:
            safe_name(name, where)

    # ---- reading and writing ----

    @classmethod
    def from_dict(cls, data: Any, where: str = "bank manifest") -> "BankManifest":
        """The manifest of a parsed manifest.json (or an in-memory dict of one); ManifestError naming where and the field."""
        if isinstance(data, BankManifest):
            return data
        if not isinstance(data, Mapping):
            raise ManifestError(f"{where}: expected a JSON object (a bank manifest), got {type(data).__name__}")
        version = _int(data.get("version", 0), f"{where}: version")
        if version > MANIFEST_VERSION:
            raise ManifestError(f"{where}: manifest version {version} was written by a newer exdd (this one reads "
                                f"versions up to {MANIFEST_VERSION}): upgrade exdd, or {REBUILD}")
        d = _obj(data, where, KEYS, ("features", "k"))
        try:
            features = FeatureSpec.from_dict(d["features"], f"{where}: features")
        except SpecError as e:
            raise ManifestError(str(e)) from None
        files = _map(d.get("files", {}), f"{where}: files")
        for name in files:
            safe_name(name, where)
        sec = lambda key, parse: None if d.get(key) is None else parse(d[key], where)  # noqa: E731
        updates = _list(d.get("updates", []), f"{where}: updates")
        return cls(
            features=features, k=check_k(d["k"], where),
            default_mode=_mode(d.get("default_mode", DEFAULT_MODE), f"{where}: default_mode"),
            modes=_strs(d.get("modes", []), f"{where}: modes"),
            threshold=sec("threshold", Thresholds.from_dict) or Thresholds(),
            scoring=sec("scoring", Scoring.from_dict) or Scoring(),
            coreset=sec("coreset", CoresetInfo.from_dict),
            defect_patch_rule=sec("defect_patch_rule", DefectPatchRule.from_dict),
            sources=sec("sources", Sources.from_dict),
            weights_note=_str(d.get("weights_note", ""), f"{where}: weights_note"),
            created=_str(d.get("created", ""), f"{where}: created"),
            tool=_str(d.get("tool", ""), f"{where}: tool"),
            parent=sec("parent", Parent.from_dict),
            updates=tuple(UpdateRecord.from_dict(u, where, f"updates[{i}]") for i, u in enumerate(updates)),
            index=sec("index", IndexEntry.from_dict),
            line=sec("line", LineRules.from_dict),
            files={str(k): FileEntry.from_dict(v, where, f"files.{k}") for k, v in files.items()},
            format_version=_int(d.get("format_version", BANK_FORMAT_VERSION), f"{where}: format_version"),
            version=version)

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
        """The JSON form: the keys of the untyped manifest plus version (the current MANIFEST_VERSION)."""
        out: Dict[str, Any] = {
            "version": MANIFEST_VERSION, "format_version": self.format_version, "features": self.features.to_dict(),
            "k": self.k, "files": {k: v.to_dict() for k, v in self.files.items()}, "default_mode": self.default_mode,
            "modes": list(self.modes), "threshold": self.threshold.to_dict(), "scoring": self.scoring.to_dict(),
            "weights_note": self.weights_note, "created": self.created, "tool": self.tool,
        }
        for name in ("coreset", "defect_patch_rule", "sources", "parent", "index", "line"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name).to_dict()
        if self.updates:
            out["updates"] = [u.to_dict() for u in self.updates]
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

    # ---- what readers ask ----

    def threshold_of(self, mode: str) -> Optional[float]:
        """The calibrated threshold of mode, None when uncalibrated."""
        return self.threshold.value(mode)

    @property
    def thresholds(self) -> Dict[str, float]:
        """{mode: calibrated threshold} (empty when uncalibrated)."""
        return dict(self.threshold.values)

    def already_added(self) -> set:
        """Absolute paths of the images added by the updates of this lineage."""
        return {p for u in self.updates for p in u.added_normal + u.added_defect}
