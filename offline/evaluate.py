"""Scoring a labelled test split with the banks and measuring every mode side by side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from exdd import defaults
from exdd.datasets import Sample
from exdd.metrics import summary
from exdd_scoring import MODES, Scorer, map_of_mode

from .extract import batches, run_extractor


@dataclass
class Scored:
    """Per-image results of a split and the image-sized maps (float32: a ratio map overflows float16) per map kind."""

    samples: List[Sample]
    scores: Dict[str, np.ndarray]
    s_neg: np.ndarray
    s_pos: np.ndarray
    maps: Dict[str, np.ndarray]
    masks: Optional[np.ndarray]
    errors: List[Tuple[str, str]]
    # issue 27, of the scorer's default mode: each image's largest region (area, box in the model input's pixels)
    # and the positive-bank row nearest to its peak patch
    areas: Optional[np.ndarray] = None
    boxes: Optional[np.ndarray] = None
    nearest_rows: Optional[np.ndarray] = None


def score_split(
    samples: Sequence[Sample],
    model,
    scorer: Scorer,
    size_hw: Tuple[int, int],
    batch_size: int = defaults.BATCH_SIZE,
    with_maps: bool = True,
    progress: Optional[Callable[[int], None]] = None,
    on_features: Optional[Callable[[np.ndarray], None]] = None,
) -> Scored:
    """Extract and score every readable sample; maps kept per kind ('neg', 'ratio'). on_features sees every batch
    of features (b, h, w, d) as it is scored (a second scorer reuses the extraction)."""
    errors: List[Tuple[str, str]] = []

    def extracted(imgs):
        f = run_extractor(model, imgs)
        if on_features is not None:
            on_features(f)
        return f

    feats = (
        (bs, extracted(imgs), [m for m in ms if m is not None])  # with_mask: every mask read
        for bs, imgs, ms in batches(samples, size_hw, batch_size, True, errors)
    )
    scored = score_features(feats, len(samples), scorer, size_hw, with_maps, progress)
    scored.errors = errors
    return scored


def score_features(
    feature_batches: Iterable[Tuple[List[Sample], np.ndarray, List[np.ndarray]]],
    n: int,
    scorer: Scorer,
    size_hw: Tuple[int, int],
    with_maps: bool = True,
    progress: Optional[Callable[[int], None]] = None,
) -> Scored:
    """Score batches of (samples, features (b, h, w, d), masks) of at most n samples."""
    kept: List[Sample] = []
    sc: Dict[str, list] = {m: [] for m in MODES}
    s_neg, s_pos, masks = [], [], []
    kinds = sorted({map_of_mode(m) for m in MODES})
    maps = {k: np.zeros((n,) + tuple(size_hw), dtype=np.float32) for k in kinds} if with_maps else {}
    served = scorer.default_mode
    areas, boxes, rows = [], [], []
    for bs, feats, ms in feature_batches:
        r = scorer.score(feats, map_modes=MODES if with_maps else (served,))
        n0 = len(kept)
        for m in MODES:
            sc[m].append(r.scores[m])
        areas.append(r.areas[served])
        boxes.append(r.boxes[served])
        rows.append(np.asarray(r.nearest_rows[served]))
        s_neg.append(r.s_neg)
        s_pos.append(r.s_pos)
        if with_maps:
            for m in MODES:
                maps[map_of_mode(m)][n0 : n0 + len(bs)] = r.maps[m]
        masks += ms
        kept += bs
        if progress:
            progress(len(bs))
    k = len(kept)
    cat = lambda v: np.concatenate(v) if v else np.zeros(0, np.float32)  # noqa: E731
    return Scored(
        kept,
        {m: cat(v) for m, v in sc.items()},
        cat(s_neg),
        cat(s_pos),
        {kk: v[:k] for kk, v in maps.items()},
        np.stack(masks) if masks else None,
        [],
        cat(areas).astype(np.int32),
        np.concatenate(boxes) if boxes else np.zeros((0, 4), np.int32),
        cat(rows).astype(np.int64),
    )


def metrics_of(scored: Scored) -> Dict[str, Dict[str, float]]:
    """Metrics per mode; pixel metrics computed once per map kind and shared by modes using it."""
    labels = np.array([s.label for s in scored.samples])
    if not (labels >= 0).any():
        return {m: {} for m in MODES}  # an unlabelled folder: scores only
    per_kind: Dict[str, Dict[str, float]] = {}
    out = {}
    for m in MODES:
        known = labels >= 0
        img = summary(scored.scores[m][known], labels[known], None, None)
        kind = map_of_mode(m)
        if scored.maps and kind not in per_kind and scored.masks is not None and scored.masks.any():
            pix = summary(np.zeros(2), np.array([0, 1]), scored.maps[kind], scored.masks)
            per_kind[kind] = {k: v for k, v in pix.items() if k.startswith("pixel_")}
        img.update(per_kind.get(kind, {}))
        out[m] = img
    return out


def table(metrics: Dict[str, Dict[str, float]]) -> str:
    """A plain-text table of the metrics, one row per mode."""
    cols = ["image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_aupro", "pixel_f1_max"]
    head = f"{'mode':<10} " + " ".join(f"{c:>12}" for c in cols)
    rows = [head]
    for m, v in metrics.items():
        rows.append(f"{m:<10} " + " ".join(f"{v.get(c, float('nan')):>12.4f}" for c in cols))
    return "\n".join(rows)
