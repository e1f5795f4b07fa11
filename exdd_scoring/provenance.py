"""The manifest's provenance typed: what the banks were built from and how they grew (read by the offline side only).

``BankManifest`` (manifest.py, what a served scorer reads) keeps these sections as JSON objects;
``OfflineManifest`` is the same manifest with them typed and checked field by field by the same
rules (unknown keys refused, wrong types named with the file and the field). Build, update and
``evaluate --stability`` read and write it (``read_manifest(dir, OfflineManifest)``,
``load_banks(dir, manifest_cls=OfflineManifest)``). The Triton models never import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from .manifest import BankManifest
from .records import Finite, Name, Positive, Record, Seed, fail


@dataclass(frozen=True)
class BankStats(Record):
    """A bank's coreset statistics: patches seen, size kept, the size rule, the coverage radius; update adds added_*."""

    patches: int
    size: int
    ratio: Optional[float] = None
    min_size: Optional[int] = None
    coreset: Optional[str] = None  # the coreset method
    radius: Optional[float] = None
    radius_is_upper_bound: Optional[bool] = None
    added_patches: Optional[int] = None  # the last update: new patches, picked rows, their radius and method
    picked: Optional[int] = None
    added_radius: Optional[float] = None
    added_radius_is_bound: Optional[bool] = None
    added_method: Optional[str] = None


@dataclass(frozen=True)
class CoresetInfo(Record):
    """Both banks' statistics and the coreset settings (seed, chunk rows, oversampling)."""

    negative: BankStats
    positive: BankStats
    seed: Seed
    chunk_rows: Optional[Positive] = None
    oversample: Optional[float] = None


@dataclass(frozen=True)
class DefectPatchRule(Record):
    """Which patches of a defective image are defect patches (cell coverage by the mask >= min_cover)."""

    min_cover: Finite
    rule: str = ""

    def check(self, at) -> None:
        if not 0.0 <= self.min_cover <= 1.0:
            fail(at("min_cover"), "a fraction in [0, 1]", self.min_cover)


@dataclass(frozen=True)
class FileError(Record):
    """A file skipped as unreadable, with the reason."""

    path: str
    error: str


@dataclass(frozen=True)
class Sources(Record):
    """What the banks were built from: the dataset, image counts, synthetic folders, held-out split, unreadable
    files."""

    dataset: str
    normal_images: int = 0
    defect_images: int = 0
    synthetic_images: int = 0
    synthetic_dirs: Tuple[str, ...] = ()
    heldout_normal: Optional[int] = None
    heldout_defect: Optional[int] = None
    unreadable: Tuple[FileError, ...] = ()
    heldout_rule: Optional[str] = None  # how the held-out images were chosen; None: before issue 25
    heldout_fraction: Optional[float] = None  # the build's --holdout; None: before issue 25


@dataclass(frozen=True)
class Parent(Record):
    """The bank directory an update grew from: its path and the sha256 of its manifest.json."""

    path: Name
    manifest_sha256: Name


@dataclass(frozen=True)
class SizeChange(Record):
    """A bank's size before and after an update."""

    size_before: int
    size_after: int


@dataclass(frozen=True)
class Added(Record):
    """The images one update added (absolute paths, in the order given)."""

    normal: Tuple[str, ...] = ()
    defect: Tuple[str, ...] = ()


@dataclass(frozen=True)
class UpdateRecord(Record):
    """One ``offline update``: when, from which parent, the images added, bank growth, thresholds, skipped files."""

    at: str
    parent: Parent
    added: Added
    negative: SizeChange
    positive: SizeChange
    threshold: str  # 'kept from the parent' or 'recalibrated on N images'
    errors: Tuple[FileError, ...] = ()
    note: str = ""
    tool: str = ""


@dataclass(frozen=True)
class OfflineManifest(BankManifest):
    """The bank manifest with its provenance typed (None: absent, as in banks built before exdd recorded it)."""

    coreset: Optional[CoresetInfo] = None  # type: ignore[assignment]  # a JSON object in BankManifest
    defect_patch_rule: Optional[DefectPatchRule] = None  # type: ignore[assignment]  # a JSON object in BankManifest
    sources: Optional[Sources] = None  # type: ignore[assignment]  # a JSON object in BankManifest
    parent: Optional[Parent] = None  # type: ignore[assignment]  # a JSON object in BankManifest
    updates: Tuple[UpdateRecord, ...] = ()  # type: ignore[assignment]  # a JSON object in BankManifest

    def already_added(self) -> set:
        """Absolute paths of the images added by the updates of this lineage."""
        return {p for u in self.updates for p in u.added.normal + u.added.defect}


__all__ = [
    "Added",
    "BankStats",
    "CoresetInfo",
    "DefectPatchRule",
    "FileError",
    "OfflineManifest",
    "Parent",
    "SizeChange",
    "Sources",
    "UpdateRecord",
]
