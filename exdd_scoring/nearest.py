"""The nearest known defect (issue 27): which training defect the image's peak defect patch looks like.

The positive bank keeps, per row, the index of the image it came from (``positive_sources.npy``, int32 (n,)),
and a table of those images (``defect_images.npy``, unicode (m,): the path relative to the dataset root, or
``synthetic:<folder>/<file>``) with their defect class (``defect_classes.npy``, unicode (m,): "" where the
dataset names none). Three plain .npy arrays listed in the manifest's files with their checksums: no pickle.

The rule: the image's peak defect patch is the argmax of its served patch map (inside the ROI: the map is 0
outside), and its nearest positive-bank row (already found by the scorer's one kNN pass) names the source image
and its class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Sequence, Tuple, Union

import numpy as np

SOURCES_FILE = "positive_sources.npy"
IMAGES_FILE = "defect_images.npy"
CLASSES_FILE = "defect_classes.npy"
FILES = (SOURCES_FILE, IMAGES_FILE, CLASSES_FILE)
Indices = Union[Sequence[int], np.ndarray]  # a list or an integer array of row / image indices


class SourcesError(ValueError):
    """Positive-bank source arrays that do not fit the bank or each other."""


@dataclass(frozen=True)
class DefectSources:
    """Per positive-bank row, its source image (index into images) and each image's class."""

    rows: np.ndarray  # (n,) int32 index into images
    images: np.ndarray  # (m,) unicode paths
    classes: np.ndarray  # (m,) unicode class names ("" = none)

    def __post_init__(self) -> None:
        check_sources(self.rows, self.images, self.classes, None, "positive-bank sources")

    @classmethod
    def of(cls, row_images: Indices, images: Sequence[str], classes: Sequence[str]) -> "DefectSources":
        """From the row -> image index list and the image / class tables."""
        return cls(np.asarray(row_images, dtype=np.int32).reshape(-1), _strings(images), _strings(classes))

    def subset(self, rows: Indices) -> "DefectSources":
        """The sources of the bank's kept rows (a coreset's sorted indices), tables unchanged."""
        return DefectSources(self.rows[np.asarray(rows, dtype=np.int64)], self.images, self.classes)

    def arrays(self) -> Tuple[Tuple[str, np.ndarray], ...]:
        """(file name, array) of the three files."""
        return ((SOURCES_FILE, self.rows), (IMAGES_FILE, self.images), (CLASSES_FILE, self.classes))

    def lookup(self, bank_rows: Any) -> Tuple[List[str], List[str]]:
        """(source images, classes) of positive-bank row indices (any array module; -1 = none: "", "")."""
        idx = np.asarray(bank_rows.get() if hasattr(bank_rows, "get") else bank_rows, dtype=np.int64).reshape(-1)
        src = [int(self.rows[i]) if i >= 0 else -1 for i in idx]
        return (
            [str(self.images[s]) if s >= 0 else "" for s in src],
            [str(self.classes[s]) if s >= 0 else "" for s in src],
        )


def _strings(values: Sequence[str]) -> np.ndarray:
    arr = np.asarray([str(v) for v in values], dtype=str)
    return arr if arr.size else np.zeros(0, dtype="<U1")


def check_sources(rows: np.ndarray, images: np.ndarray, classes: np.ndarray, bank_rows: Any, where: str) -> None:
    """SourcesError naming where unless rows (n,) int index images (m,) and classes (m,) are strings of the same
    length, and n is the positive bank's row count (when given)."""
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise SourcesError(f"{where}: {SOURCES_FILE} must be a 1-D integer array, got {rows.shape} {rows.dtype}")
    for name, arr in ((IMAGES_FILE, images), (CLASSES_FILE, classes)):
        if arr.ndim != 1 or arr.dtype.kind != "U":
            raise SourcesError(f"{where}: {name} must be a 1-D string array, got {arr.shape} {arr.dtype}")
    if images.shape != classes.shape:
        raise SourcesError(f"{where}: {IMAGES_FILE} has {images.shape[0]} images, {CLASSES_FILE} {classes.shape[0]}")
    if rows.size and (rows.min() < 0 or rows.max() >= images.shape[0]):
        raise SourcesError(f"{where}: {SOURCES_FILE} points outside the {images.shape[0]} source images")
    if bank_rows is not None and rows.shape[0] != int(bank_rows):
        raise SourcesError(f"{where}: {SOURCES_FILE} has {rows.shape[0]} rows, the positive bank {int(bank_rows)}")


def peak_patches(patch_maps: Any, xp: Any) -> Any:
    """(B,) flat index of each image's peak patch of (B, h, w) patch maps."""
    return xp.argmax(patch_maps.reshape(patch_maps.shape[0], -1), axis=1)


def rows_at(patch_rows: Any, peaks: Any, xp: Any) -> Any:
    """(B,) the nearest positive-bank row of each image's peak patch; patch_rows (B, P)."""
    return patch_rows[xp.arange(patch_rows.shape[0]), peaks]


def majority_class(classes: Sequence[str]) -> str:
    """The most frequent class name (ties: the first in sorted order); "" for none."""
    names, counts = np.unique(np.asarray(list(classes), dtype=str), return_counts=True)
    return str(names[int(np.argmax(counts))]) if names.size else ""
