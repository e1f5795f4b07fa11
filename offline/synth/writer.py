"""Atomic outputs of one sample: NNNNN.png, NNNNN_GT.png, then NNNNN.json (the 'done' marker).

Every file is written to a hidden temporary name in the same folder and renamed into place,
so a crash never leaves a half-written file under a final name; the sidecar is written last,
so a sample counts as done exactly when its sidecar exists.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Dict, Optional

import numpy as np
from PIL import Image

from exdd.fileio import atomic_write


def stem(index: int) -> str:
    """The file stem of sample index: 00042."""
    return f"{index:05d}"


def paths(out_dir: str, index: int) -> Dict[str, str]:
    """The image, mask and sidecar paths of sample index."""
    s = os.path.join(out_dir, stem(index))
    return {"image": s + ".png", "mask": s + "_GT.png", "sidecar": s + ".json"}


def atomic_png(path: str, array: np.ndarray) -> None:
    """Write a uint8 (H, W) or (H, W, 3) array as a PNG, atomically."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    atomic_write(path, buf.getvalue())


def atomic_json(path: str, obj: Any) -> None:
    """Write obj as indented JSON, flushed to disk, atomically."""
    atomic_write(path, json.dumps(obj, indent=1) + "\n", fsync=True)


def write_sample(out_dir: str, index: int, image: np.ndarray, mask: np.ndarray, sidecar: Dict[str, Any]) -> None:
    """Write image, 0/255 mask, then the sidecar (last) of sample index."""
    p = paths(out_dir, index)
    atomic_png(p["image"], image)
    atomic_png(p["mask"], (mask.astype(bool) * 255).astype(np.uint8))
    atomic_json(p["sidecar"], sidecar)


def read_sidecar(out_dir: str, index: int) -> Optional[Dict[str, Any]]:
    """The sidecar of sample index, or None when the sample is not done (or its sidecar is unreadable)."""
    p = paths(out_dir, index)
    if not os.path.isfile(p["sidecar"]):
        return None
    try:
        with open(p["sidecar"]) as f:
            side = json.load(f)
    except (OSError, ValueError):
        return None
    if not (os.path.isfile(p["image"]) and os.path.isfile(p["mask"])):
        return None
    return side
