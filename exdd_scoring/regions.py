"""Connected regions of a map above a pixel threshold: the largest one's area and box (issue 27, minimum area).

8-connected (pixels touching by an edge or a corner are one region), labelled from runs with numpy only (the
served model has no scipy): each row's runs of pixels above the threshold, runs of adjacent rows that touch
joined by min-label propagation. Cost grows with the number of runs, not of pixels. On cupy the (small) boolean
mask is brought to the host.

A box is [x0, y0, x1, y1] in the map's pixels (the model input frame, as ANOMALY_MAP and the ROI), x1 and y1
exclusive (width x1 - x0); [0, 0, 0, 0] with area 0 when no pixel is above the threshold.
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

NO_BOX = (0, 0, 0, 0)


def runs(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, start, end) of every horizontal run of True in a (H, W) bool mask, end exclusive, sorted by row."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    r0, s = np.nonzero(d == 1)
    _, e = np.nonzero(d == -1)
    return r0, s, e


def run_labels(row: np.ndarray, start: np.ndarray, end: np.ndarray, width: int) -> np.ndarray:
    """A component label per run: runs of adjacent rows that touch (8-connected) share one."""
    n = row.shape[0]
    labels = np.arange(n)
    if n < 2:
        return labels
    stride = width + 2
    key_s, key_e = row * stride + start, row * stride + end  # both sorted (runs of a row are disjoint, in order)
    below = row > 0
    b = np.nonzero(below)[0]
    # runs a of the row above touching run b: a.end >= b.start and a.start <= b.end (8-connected, end exclusive)
    lo = np.searchsorted(key_e, (row[b] - 1) * stride + start[b], side="left")
    hi = np.searchsorted(key_s, (row[b] - 1) * stride + end[b], side="right")
    count = np.maximum(hi - lo, 0)
    if count.sum() == 0:
        return labels
    u = np.repeat(b, count)
    v = np.concatenate([np.arange(l_, h_) for l_, h_ in zip(lo[count > 0], hi[count > 0])])
    while True:
        m = np.minimum(labels[u], labels[v])
        new = labels.copy()
        np.minimum.at(new, u, m)
        np.minimum.at(new, v, m)
        new = new[new]  # pointer jumping: a label points at a run whose label may be smaller
        if np.array_equal(new, labels):
            return labels
        labels = new


def largest_region(mask: Any) -> Tuple[int, Tuple[int, int, int, int]]:
    """(area, (x0, y0, x1, y1)) of the largest 8-connected region of a (H, W) bool mask; (0, NO_BOX) if empty.
    Ties go to the region whose first run comes first (top, then left)."""
    m = np.asarray(mask.get() if hasattr(mask, "get") else mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"regions: expected a (H, W) mask, got shape {m.shape}")
    row, start, end = runs(m)
    if row.size == 0:
        return 0, NO_BOX
    labels = run_labels(row, start, end, m.shape[1])
    areas = np.bincount(labels, weights=end - start, minlength=labels.size)
    best = int(np.argmax(areas))
    sel = labels == best
    box = (int(start[sel].min()), int(row[sel].min()), int(end[sel].max()), int(row[sel].max()) + 1)
    return int(areas[best]), box


def largest_regions(maps: Any, pixel_threshold: float) -> Tuple[np.ndarray, np.ndarray]:
    """Per image of (B, H, W) maps: the area (B,) int32 and box (B, 4) int32 of its largest region of pixels
    >= pixel_threshold."""
    above = maps >= pixel_threshold
    above = np.asarray(above.get() if hasattr(above, "get") else above)
    areas = np.zeros(above.shape[0], dtype=np.int32)
    boxes = np.zeros((above.shape[0], 4), dtype=np.int32)
    for i in range(above.shape[0]):
        areas[i], boxes[i] = largest_region(above[i])
    return areas, boxes


def box_in_image(box, input_hw: Tuple[int, int], image_hw: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """A box of the model-input frame in the image's own pixels (the image is resized whole to the input):
    starts rounded down, ends up, so the box still covers the region; NO_BOX stays NO_BOX."""
    x0, y0, x1, y1 = (int(v) for v in box)
    if (x0, y0, x1, y1) == NO_BOX:
        return NO_BOX
    sy, sx = image_hw[0] / input_hw[0], image_hw[1] / input_hw[1]
    return (
        int(np.floor(x0 * sx)),
        int(np.floor(y0 * sy)),
        min(int(np.ceil(x1 * sx)), int(image_hw[1])),
        min(int(np.ceil(y1 * sy)), int(image_hw[0])),
    )
