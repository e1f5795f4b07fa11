"""Writing files that others read: atomically (never half a file), and as strict JSON."""
from __future__ import annotations

import math
import os
import threading
from typing import Any, Union

import numpy as np


def atomic_write(path: str, data: Union[str, bytes], fsync: bool = False) -> str:
    """Write data through a temporary file in path's folder and a rename, so a reader sees the old or the new file."""
    folder, base = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.{threading.get_ident()}.tmp")   # open(): the umask's mode
    binary = isinstance(data, bytes)
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def json_safe(obj: Any) -> Any:
    """obj with NaN/inf as None and numpy scalars/arrays as plain Python (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj
