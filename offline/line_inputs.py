"""Issue 27's build inputs: the region of interest (`offline build --roi MASK.png`) and the training images'
defect classes (`--classes CSV`, or the MVTec layout's folder names)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

from exdd.images import ImageReadError, read_mask
from exdd_scoring.roi import RoiError, input_roi

IMAGE_COLUMNS = ("image", "new_image")  # the CSV's column naming each image (relative to the dataset root)
CLASS_COLUMNS = ("class", "defect_type")  # ... and its defect class


@dataclass(frozen=True)
class LineInputs:
    """The region of interest (bool (H, W) at the model input, the mask file's bytes and where it came from) and the
    defect class of each training image (path relative to the dataset root -> class)."""

    roi: Optional[np.ndarray] = None
    roi_png: Optional[bytes] = None
    roi_source: str = ""
    classes: Dict[str, str] = field(default_factory=dict)
    classes_source: str = ""


def read_roi(path: str, input_hw: Tuple[int, int]) -> Tuple[np.ndarray, bytes]:
    """(the ROI at the model input size, the file's bytes) of a mask picture (white = inspect); ValueError naming
    the file when it is not a picture or inspects nothing."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        mask = read_mask(path, None)  # any nonzero pixel inspects
        return input_roi(mask, input_hw, f"--roi {path}"), data
    except (OSError, ImageReadError, RoiError) as e:
        raise ValueError(f"--roi {path}: {e}" if not str(e).startswith("--roi") else str(e)) from None


def read_classes(path: str) -> Dict[str, str]:
    """{image path relative to the dataset root: class} of a CSV with a header naming an image column (image or
    new_image) and a class column (class or defect_type); ValueError naming the file otherwise."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            img = next((c for c in IMAGE_COLUMNS if c in cols), None)
            cls = next((c for c in CLASS_COLUMNS if c in cols), None)
            if img is None or cls is None:
                raise ValueError(
                    f"--classes {path}: the header must name an image column "
                    f"({' or '.join(IMAGE_COLUMNS)}) and a class column "
                    f"({' or '.join(CLASS_COLUMNS)}), got {cols}"
                )
            return {os.path.normpath(r[img]): r[cls] or "" for r in reader if r.get(img)}
    except OSError as e:
        raise ValueError(f"--classes {path}: unreadable ({e})") from None


def line_inputs(roi_path: Optional[str], classes_path: Optional[str], input_hw: Tuple[int, int]) -> LineInputs:
    """The build's LineInputs of the CLI options (either may be None)."""
    roi, data = read_roi(roi_path, input_hw) if roi_path else (None, None)
    classes = read_classes(classes_path) if classes_path else {}
    return LineInputs(
        roi,
        data,
        os.path.abspath(roi_path) if roi_path else "",
        classes,
        os.path.abspath(classes_path) if classes_path else "",
    )
