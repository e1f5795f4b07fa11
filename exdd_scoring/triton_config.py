"""The parameters of a Triton model config (the JSON dict a Python-backend model gets): read alike by both models."""

from __future__ import annotations

from typing import Any, Dict, Optional


def config_parameter(config: Dict[str, Any], key: str, default: Optional[str] = None) -> Optional[str]:
    """A string parameter of the model config, or default (Triton gives an unset parameter as an empty string)."""
    entry = (config.get("parameters") or {}).get(key)
    value = entry.get("string_value", "") if isinstance(entry, dict) else ""
    return value if value != "" else default
