"""Adding to a registry (layouts, synthesis methods, features backends): names are unique, a clash is a clear error."""

from __future__ import annotations

from typing import Collection, Dict, TypeVar

T = TypeVar("T")


def register_unique(registry: Dict[str, T], item: T, what: str, reserved: Collection[str] = ()) -> T:
    """Add item under its .name; a name already taken (or reserved, like 'auto') raises, naming what it is."""
    name = getattr(item, "name")
    if name in registry or name in reserved:
        raise ValueError(f"{what} {name!r} is already registered")
    registry[name] = item
    return item
