"""The ``line`` section of a bank manifest (issue 27): what a line operator gets from each answer, calibrated at
build time per mode: the review band, the confidence model, the pixel threshold of the served map, the minimum
defect area and the region of interest. Typed records (records.py) read and written by ``BankManifest``.

numpy-free and standard library only (the package is copied into Triton model repositories).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .records import Finite, Name, Record, fail, json_object


@dataclass(frozen=True)
class ReviewBand(Record):
    """One mode's review band (issue 27, offline/calibrate.review_band): ok below ok_below (T1), defect at or above
    defect_above (T2), review between; detail is the calibration's record (rates, held-out counts)."""

    ok_below: Finite
    defect_above: Finite
    detail: Mapping[str, Any] = field(default_factory=dict)

    def check(self, at) -> None:
        if self.ok_below > self.defect_above:
            fail(at("ok_below"), f"at most defect_above ({self.defect_above})", self.ok_below)


@dataclass(frozen=True)
class Confidence(Record):
    """One mode's confidence model (verdict.confidence): P(defect) = sigmoid((asinh(score) - mean) / scale x coef
    + intercept), fitted on the hold-out (offline/calibrate.fit_confidence)."""

    mean: Finite
    scale: Finite
    coef: Finite
    intercept: Finite
    transform: Name = "asinh"
    heldout: Optional[Mapping[str, int]] = None  # {'normal', 'defective'} images it was fitted on

    def check(self, at) -> None:
        if self.scale == 0:
            fail(at("scale"), "a non-zero number", self.scale)
        if self.transform != "asinh":
            fail(at("transform"), "'asinh'", self.transform)
        if self.heldout is not None:
            json_object(self.heldout, at("heldout"), ("normal", "defective"))


@dataclass(frozen=True)
class RoiInfo(Record):
    """The region of interest the banks were built with (issue 27): the sha256 of the mask file as given (roi.png
    in the bank, also in files), where it came from, and how many patches of the grid it keeps."""

    sha256: Name
    source: str = ""
    patches_inside: int = 0
    patches: int = 0


@dataclass(frozen=True)
class LineRules(Record):
    """What a line operator gets from each answer (issue 27), calibrated at build time per mode: the review band,
    the confidence model, the pixel threshold of the served map (its regions give area and box), the minimum
    defect area (pixels, 0 = off), the ROI, where the defect classes came from. Absent (banks before version 3):
    no ROI, min area 0, the band [T, T] (ok / defect as IS_DEFECT), confidence unknown (NaN), no regions."""

    review: Mapping[str, ReviewBand] = field(default_factory=dict)
    confidence: Mapping[str, Confidence] = field(default_factory=dict)
    pixel_threshold: Mapping[str, Finite] = field(default_factory=dict)
    pixel_rule: str = ""
    min_area: int = 0
    roi: Optional[RoiInfo] = None
    classes: str = ""
