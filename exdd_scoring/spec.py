"""``FeatureSpec``: the typed fingerprint of a feature extractor, defined once.

Banks, the exported ONNX (its metadata), ``features.json`` in both Triton models and the scorer's
config all carry it; two extractors are interchangeable iff their IDENTITY fields are equal.
Standard library only (the file is copied into Triton model repositories).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

# What makes two feature extractors interchangeable: a bank is only valid with the same values.
IDENTITY = (
    "backbone",
    "weights",
    "input_size",
    "layers",
    "grid",
    "projection",
    "projection_seed",
    "projection_sha256",
    "d",
)
# The projection kind of a fingerprint that does not name one: every bank, ONNX file and features.json written
# before fitted projections (issue 25) used the seeded random projection. Fixed for ever, whatever the build's
# default (exdd.defaults.PROJECTION) becomes.
RANDOM_PROJECTION = "random"
REQUIRED = tuple(k for k in IDENTITY if k != "projection")


class SpecError(ValueError):
    """A features fingerprint that is malformed or does not match; the message names where."""


def _pair(value: Any, name: str, where: str) -> Tuple[int, int]:
    if (
        isinstance(value, (str, bytes))
        or not hasattr(value, "__len__")
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        raise SpecError(f"{where}: {name} must be two positive integers, got {value!r}")
    return int(value[0]), int(value[1])


@dataclass(frozen=True)
class FeatureSpec:
    """The features fingerprint: backbone, weights id, input size (H, W), layers, patch grid, projection, d.

    projection: its kind ('random': the Gaussian matrix of projection_seed; a fitted kind such as 'pca': a matrix
    fitted on the normal training patches, stored as the bank's projection.npy, projection_seed 0). Either way
    projection_sha256 is the matrix's own hash, so two fitted projections of other images differ there.
    """

    backbone: str
    weights: str
    input_size: Tuple[int, int]
    layers: Tuple[str, ...]
    grid: Tuple[int, int]
    projection_seed: int
    projection_sha256: str
    d: int
    aggregation: str = ""
    projection: str = RANDOM_PROJECTION
    weights_source: Optional[str] = None  # where the weights were read from (not part of the identity)

    def __post_init__(self) -> None:
        self.validate("features")

    def validate(self, where: str) -> None:
        """Raise SpecError naming where and the field unless every field is well formed."""
        for name in ("backbone", "weights", "projection_sha256", "projection"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise SpecError(f"{where}: {name} must be a non-empty string, got {getattr(self, name)!r}")
        object.__setattr__(self, "input_size", _pair(self.input_size, "input_size", where))
        object.__setattr__(self, "grid", _pair(self.grid, "grid", where))
        if isinstance(self.layers, str) or not all(isinstance(v, str) for v in self.layers) or not self.layers:
            raise SpecError(f"{where}: layers must be a non-empty list of layer names, got {self.layers!r}")
        object.__setattr__(self, "layers", tuple(self.layers))
        for name in ("projection_seed", "d"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "d" else 0):
                raise SpecError(f"{where}: {name} must be an integer >= {1 if name == 'd' else 0}, got {v!r}")
        if self.grid[0] > self.input_size[0] or self.grid[1] > self.input_size[1]:
            raise SpecError(f"{where}: grid {self.grid} is larger than the input size {self.input_size}")

    @classmethod
    def from_dict(cls, data: Union[Mapping[str, Any], "FeatureSpec"], where: str = "features") -> "FeatureSpec":
        """The spec of a JSON object (a manifest's 'features', features.json, ONNX metadata); unknown keys ignored."""
        if isinstance(data, FeatureSpec):
            return data
        if not isinstance(data, Mapping):
            raise SpecError(f"{where}: expected a JSON object of features, got {type(data).__name__}")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise SpecError(f"{where}: missing {', '.join(missing)}")
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        try:
            spec = cls.__new__(cls)
            for f in fields(cls):
                object.__setattr__(spec, f.name, kw.get(f.name, f.default))
            spec.validate(where)
        except SpecError:
            raise
        except Exception as e:  # any malformed value is this input's error
            raise SpecError(f"{where}: malformed features ({e})") from None
        return spec

    @classmethod
    def from_json(cls, text: str, where: str = "features") -> "FeatureSpec":
        try:
            return cls.from_dict(json.loads(text), where)
        except ValueError as e:
            if isinstance(e, SpecError):
                raise
            raise SpecError(f"{where}: not JSON ({e})") from None

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form (lists for tuples; weights_source only when known)."""
        out: Dict[str, Any] = {
            "backbone": self.backbone,
            "weights": self.weights,
            "input_size": list(self.input_size),
            "layers": list(self.layers),
            "grid": list(self.grid),
            "projection": self.projection,
            "projection_seed": self.projection_seed,
            "projection_sha256": self.projection_sha256,
            "d": self.d,
        }
        if self.aggregation:
            out["aggregation"] = self.aggregation
        if self.weights_source is not None:
            out["weights_source"] = self.weights_source
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def identity(self) -> Dict[str, Any]:
        """The IDENTITY fields only (what must match)."""
        return {k: v for k, v in self.to_dict().items() if k in IDENTITY}

    def mismatches(self, other: "FeatureSpec") -> List[str]:
        """'key: ours X, theirs Y' for every IDENTITY field that differs."""
        a, b = self.identity(), other.identity()
        return [f"{k}: {a[k]!r} vs {b[k]!r}" for k in IDENTITY if a[k] != b[k]]

    def matches(self, other: "FeatureSpec") -> bool:
        return not self.mismatches(other)

    @property
    def patches(self) -> int:
        """Patches per image (grid h x w)."""
        return self.grid[0] * self.grid[1]

    @property
    def features_shape(self) -> Tuple[int, int, int]:
        """(h, w, d) of one image's features."""
        return self.grid[0], self.grid[1], self.d
