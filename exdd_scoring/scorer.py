"""The scorer: banks held on one device (numpy or cupy) and every mode computed in one pass."""

from __future__ import annotations

import warnings
from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np

from .bank import BankPair
from .knn import default_max_block, nearest, sq_norms
from .nearest import peak_patches, rows_at
from .regions import largest_regions
from .resample import upsample_smooth, upsample_smooth_matrices
from .roi import input_roi, mask_maps, mask_patches, patch_roi
from .score_batch import ScoreBatch
from .scores import MODE_REGISTRY, MODES, Evidence, bank_peak, bank_scale, image_scores, mode, positive_scale


def map_of_mode(name: str) -> str:
    """The map kind a mode serves."""
    return mode(name).map_kind


class Scorer:
    """Scores (B, h, w, d) patch features against a BankPair with the math of ``scores``."""

    def __init__(
        self,
        banks: BankPair,
        xp: Any = np,
        sigma: float = 4.0,
        eps: float = 1e-6,
        out_hw: Optional[Tuple[int, int]] = None,
        max_block: Optional[int] = None,
        searchers: Optional[Dict[str, Any]] = None,
    ):
        # searchers: optional {'negative'|'positive': object with nearest(queries) -> (dist, idx)} (see ann.py);
        # banks without one use the exact chunked search
        self.searchers = dict(searchers or {})
        feats = banks.manifest.features
        # max_block: elements of the largest distance block (default: default_max_block(xp), larger on a GPU)
        self.xp, self.eps = xp, float(eps)
        self.max_block = int(max_block) if max_block is not None else default_max_block(xp)
        self.grid = feats.grid
        hw = out_hw or feats.input_size
        self.out_hw = (int(hw[0]), int(hw[1]))
        self.d = feats.d
        self.manifest = banks.manifest
        self.neg = xp.asarray(banks.negative.vectors, dtype=xp.float32)
        self.neg_sq = sq_norms(self.neg, xp)
        self.neg_nb = xp.asarray(banks.negative.neighbors, dtype=xp.int64)
        positive = banks.positive
        self.has_positive = positive is not None
        if positive is not None:
            self.pos = xp.asarray(positive.vectors, dtype=xp.float32)
            self.pos_sq = sq_norms(self.pos, xp)
            self.pos_nb = xp.asarray(positive.neighbors, dtype=xp.int64)
        else:
            warnings.warn(
                "the positive (defect) bank is empty: all modes fall back to patchcore (negative bank only)",
                RuntimeWarning,
                stacklevel=2,
            )
        s_h, s_w = upsample_smooth_matrices(self.grid, self.out_hw, sigma)
        self.s_h, self.s_w = xp.asarray(s_h), xp.asarray(s_w)
        self.thresholds: Dict[str, float] = banks.manifest.thresholds
        self.default_mode = banks.manifest.default_mode  # a registered mode (the manifest checks it)
        self.params = banks.manifest.scoring.params()
        if self.has_positive:  # the bounded scale of ratio_b / dual_b / raise
            # the positive bank's spacing, floored by the negative bank's (a one-row or duplicated bank has none)
            self.params["pos_scale"] = positive_scale(
                bank_scale(self.pos, self.pos_nb, xp), bank_scale(self.neg, self.neg_nb, xp)
            )
        # issue 27: the region of interest (patch and pixel masks; None: everywhere), the positive bank's defect
        # sources (None: banks built before them), the pixel thresholds of the served maps per mode
        self.roi_patches = self.roi_pixels = None
        if banks.roi is not None:
            roi = np.asarray(banks.roi, dtype=bool)
            if roi.shape != tuple(feats.input_size):
                raise ValueError(f"ROI of shape {roi.shape}, expected the model input {tuple(feats.input_size)}")
            self.roi_patches = xp.asarray(patch_roi(roi, self.grid).reshape(-1))
            self.roi_pixels = xp.asarray(input_roi(roi, self.out_hw)) if self.out_hw != roi.shape else xp.asarray(roi)
        self.sources = banks.sources if self.has_positive else None
        self.line = banks.manifest.line
        self.pixel_thresholds: Dict[str, float] = dict(self.line.pixel_threshold) if self.line else {}

    def nearest(self, bank: str, flat: Any) -> Tuple[Any, Any]:
        """Distance and index of the nearest vector of bank 'negative' or 'positive' for every row of flat."""
        if bank in self.searchers:
            return self.searchers[bank].nearest(flat)
        vectors, sq = (self.neg, self.neg_sq) if bank == "negative" else (self.pos, self.pos_sq)
        return nearest(flat, vectors, self.xp, sq, self.max_block)

    def check_features(self, feats: Any) -> None:
        """Raise ValueError unless feats is a finite (B>=1, h, w, d) array of this bank's grid and d."""
        xp = self.xp
        if feats.ndim != 4 or tuple(feats.shape[1:3]) != self.grid or feats.shape[3] != self.d or feats.shape[0] < 1:
            raise ValueError(
                f"features of shape {tuple(feats.shape)} do not match the banks: expected "
                f"(B>=1, {self.grid[0]}, {self.grid[1]}, {self.d})"
            )
        if not bool(xp.isfinite(feats).all()):
            raise ValueError("features contain NaN or inf")

    def evidence(self, feats: Any) -> Evidence:
        """The one-pass evidence of a (B, h, w, d) batch: nearest distances to both banks and their peaks."""
        xp = self.xp
        self.check_features(feats)
        b, h, w, d = feats.shape
        flat = xp.ascontiguousarray(feats.reshape(b * h * w, d), dtype=xp.float32)
        per_img = flat.reshape(b, h * w, d)
        a_neg, i_neg = self.nearest("negative", flat)
        a_neg, i_neg = a_neg.reshape(b, h * w), i_neg.reshape(b, h * w)
        if self.roi_patches is not None:  # outside the ROI: distance 0 to the normal bank, no evidence
            a_neg = mask_patches(a_neg, self.roi_patches)
        neg = bank_peak(a_neg, i_neg, per_img, self.neg, self.neg_nb, xp)
        pos, a_pos, i_pos = None, None, None
        if self.has_positive:
            a_pos, i_pos = self.nearest("positive", flat)
            a_pos, i_pos = a_pos.reshape(b, h * w), i_pos.reshape(b, h * w)
            if self.roi_patches is not None:
                a_pos = mask_patches(a_pos, self.roi_patches)
            pos = bank_peak(a_pos, i_pos, per_img, self.pos, self.pos_nb, xp)
        return Evidence(a_neg, a_pos, neg, pos, self.grid, self.eps, xp, self._smooth, self.params, i_pos=i_pos)

    def _smooth(self, patch_maps: Any) -> Any:
        """(B, h, w) -> (B, H, W) upsampled, smoothed map, 0 outside the ROI."""
        out = upsample_smooth(patch_maps, self.s_h, self.s_w, self.xp)
        return out if self.roi_pixels is None else mask_maps(out, self.roi_pixels)

    def nearest_rows(self, ev: Evidence, mode_name: str) -> Any:
        """(B,) the positive-bank row nearest to each image's peak patch of mode's served map (-1 without a
        positive bank): the nearest known defect (nearest.py)."""
        xp = self.xp
        if ev.i_pos is None:
            return xp.full(ev.a_neg.shape[0], -1, dtype=xp.int64)
        return rows_at(ev.i_pos, peak_patches(ev.patch_map(map_of_mode(mode_name)), xp), xp)

    def regions(self, maps: Any, mode_name: str) -> Tuple[np.ndarray, np.ndarray]:
        """Area (B,) and box (B, 4) of each image's largest region of the served map of mode above its calibrated
        pixel threshold (host arrays; area 0 and no box without one)."""
        t = self.pixel_thresholds.get(mode_name)
        if t is None:
            b = maps.shape[0]
            return np.zeros(b, dtype=np.int32), np.zeros((b, 4), dtype=np.int32)
        return largest_regions(maps, t)

    def score(self, feats: Any, map_modes: Iterable[str] = MODES, modes: Optional[Iterable[str]] = None) -> ScoreBatch:
        """Scores of the modes (all by default), per-bank scores and patch maps, and image-sized maps of map_modes
        only (map_modes=(): no served map is upsampled or smoothed; a mode's score still builds the maps it needs)."""
        ev = self.evidence(feats)
        b = feats.shape[0]
        wanted = tuple(MODE_REGISTRY if modes is None else modes)
        sc = image_scores(ev, wanted)
        maps = {m: ev.image_map(map_of_mode(m)) for m in map_modes}
        regions = {m: self.regions(maps[m], m) for m in maps}  # issue 27, per map mode (host)
        return ScoreBatch(
            scores={m: sc[m] for m in wanted},
            s_neg=sc["s_neg"],
            s_pos=sc["s_pos"],
            patch_neg=ev.a_neg.reshape((b,) + self.grid),
            patch_pos=None if ev.a_pos is None else ev.a_pos.reshape((b,) + self.grid),
            maps=maps,
            nearest_rows={m: self.nearest_rows(ev, m) for m in wanted},
            areas={m: r[0] for m, r in regions.items()},
            boxes={m: r[1] for m, r in regions.items()},
            evidence=ev,
        )
