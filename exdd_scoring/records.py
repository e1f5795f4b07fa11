"""Typed JSON records: frozen dataclasses read from and written to JSON by their field types, defined once.

``Record.from_dict`` checks a JSON value against the field types (unknown keys refused, required keys
present, each value of its type) and ``Record.to_dict`` writes the fields back (None ones left out).
Types: int (>= 0), float (a number, not NaN), str, bool, the checked ``NewType`` s below (and any added
to ``SCALARS``), Optional, Tuple[X, ...], Mapping[str, X], Any, nested records, and a class with its own
``from_dict(value, name)`` (FeatureSpec). A broken rule raises ``RecordError`` naming 'FILE: field.path'.
Standard library only (the package is copied into Triton model repositories).
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping as AbcMapping
from dataclasses import MISSING, fields
from typing import Any, Callable, ClassVar, Dict, Iterable, Mapping, NewType, Optional, Tuple, Union


class RecordError(ValueError):
    """A JSON value that does not fit its record: the message names the file and the field."""


def fail(name: str, want: str, value: Any) -> None:
    raise RecordError(f"{name} must be {want}, got {value!r}")


def check(ok: Callable[[Any], bool], want: str, conv: Callable[[Any], Any] = lambda v: v):
    """A field check from a test: check(value, name) is conv(value), or RecordError 'name must be want, got value'."""

    def checked(value: Any, name: str) -> Any:
        if not ok(value):
            fail(name, want, value)
        return conv(value)

    return checked


_isint = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
_isnum = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)  # noqa: E731
if typing.TYPE_CHECKING:  # to a type checker the checked scalars are their base types (checked when parsed)
    Seed = int
    Positive = int
    Finite = float
    Name = str
else:
    Seed = NewType("Seed", int)  # any integer
    Positive = NewType("Positive", int)  # an integer >= 1
    Finite = NewType("Finite", float)  # not infinite
    Name = NewType("Name", str)  # a non-empty string
SCALARS: Dict[Any, Callable[[Any, str], Any]] = {
    int: check(lambda v: _isint(v) and v >= 0, "an integer >= 0", int),
    Seed: check(_isint, "an integer", int),
    Positive: check(lambda v: _isint(v) and v >= 1, "an integer >= 1", int),
    float: check(_isnum, "a number", float),
    Finite: check(lambda v: _isnum(v) and not math.isinf(v), "a finite number", float),
    str: check(lambda v: isinstance(v, str), "a string"),
    Name: check(lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    bool: check(lambda v: isinstance(v, bool), "true or false"),
}
json_list = check(lambda v: isinstance(v, (list, tuple)), "a JSON list")


def json_object(
    value: Any, name: str, known: Optional[Iterable[str]] = None, required: Iterable[str] = ()
) -> Mapping[str, Any]:
    """value as a JSON object (with only the known keys, when given, and every required one)."""
    if not isinstance(value, Mapping):
        raise RecordError(f"{name} must be a JSON object, got {type(value).__name__} {value!r}")
    known = tuple(value if known is None else known)
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise RecordError(
            f"{name}: unknown key(s) {', '.join(map(repr, unknown))} (known: {', '.join(known)}); "
            f"a typo or a hand edit? exdd writes only these"
        )
    missing = [k for k in required if k not in value]
    if missing:
        raise RecordError(f"{name}: missing {', '.join(map(repr, missing))}")
    return value


def field_types(cls: type) -> Dict[str, Any]:
    """The field types of a dataclass (resolved once per class)."""
    hints: Optional[Dict[str, Any]] = cls.__dict__.get("_field_types")
    if hints is None:
        hints = typing.get_type_hints(cls)
        setattr(cls, "_field_types", hints)
    return hints


def optional(tp: Any) -> Tuple[Any, bool]:
    """(the type inside Optional[...], whether it was Optional)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is Union and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return tp, False


def parse(tp: Any, value: Any, where: str, path: str = "") -> Any:
    """value (JSON) as a value of field type tp; RecordError naming 'where: path' (where alone at the top)."""
    name = f"{where}: {path}" if path else where
    tp, opt = optional(tp)
    if value is None and opt:
        return None
    if tp is Any:
        return value
    if tp in SCALARS:
        return SCALARS[tp](value, name)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        return tuple(parse(args[0], v, where, f"{path}[{i}]") for i, v in enumerate(json_list(value, name)))
    if origin is AbcMapping:
        return {
            parse(args[0], k, where, path): parse(args[1], v, where, f"{path}.{k}")
            for k, v in json_object(value, name).items()
        }
    if isinstance(value, tp):
        return value
    if not issubclass(tp, Record):
        return tp.from_dict(value, name)
    fs = fields(tp)
    d = json_object(
        value, name, [f.name for f in fs], [f.name for f in fs if f.default is MISSING and f.default_factory is MISSING]
    )
    types = field_types(tp)
    obj = tp(**{k: parse(types[k], v, where, f"{path}.{k}" if path else k) for k, v in d.items()})
    obj.check(lambda k: f"{name}.{k}" if path else f"{where}: {k}")
    return obj


def dump(value: Any) -> Any:
    """The JSON form of a field value."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: dump(v) for k, v in value.items()}
    return [dump(v) for v in value] if isinstance(value, (tuple, list)) else value


class Record:
    """Base of a frozen dataclass read from and written to JSON by its field types."""

    __dataclass_fields__: ClassVar[Dict[str, Any]]  # set by @dataclass on each subclass

    @classmethod
    def from_dict(cls, d: Any, where: str, path: str = "") -> Any:
        return parse(cls, d, where, path)

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: dump(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None}

    def check(self, at: Callable[[str], str]) -> None:
        """What the field types cannot say (ranges, lengths); at(key) is the field's name for the message."""
