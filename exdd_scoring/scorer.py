"""The scorer: banks held on one device (numpy or cupy) and every mode computed in one pass."""
from __future__ import annotations

import warnings
from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np

from .bank import BankPair
from .knn import DEFAULT_MAX_BLOCK, nearest, sq_norms
from .resample import upsample_smooth, upsample_smooth_matrices
from .score_batch import ScoreBatch
from .scores import MODE_REGISTRY, MODES, Evidence, bank_peak, bank_scale, image_scores, mode, positive_scale


def map_of_mode(name: str) -> str:
    """The map kind a mode serves."""
    return mode(name).map_kind


class Scorer:
    """Scores (B, h, w, d) patch features against a BankPair with the math of ``scores``."""

    def __init__(self, banks: BankPair, xp: Any = np, sigma: float = 4.0, eps: float = 1e-6,
                 out_hw: Optional[Tuple[int, int]] = None, max_block: int = DEFAULT_MAX_BLOCK,
                 searchers: Optional[Dict[str, Any]] = None):
        # searchers: optional {'negative'|'positive': object with nearest(queries) -> (dist, idx)} (see ann.py);
        # banks without one use the exact chunked search
        self.searchers = dict(searchers or {})
        feats = banks.manifest.features
        self.xp, self.eps, self.max_block = xp, float(eps), int(max_block)
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
            warnings.warn("the positive (defect) bank is empty: all modes fall back to "
                          "patchcore (negative bank only)", RuntimeWarning, stacklevel=2)
        s_h, s_w = upsample_smooth_matrices(self.grid, self.out_hw, sigma)
        self.s_h, self.s_w = xp.asarray(s_h), xp.asarray(s_w)
        self.thresholds: Dict[str, float] = banks.manifest.thresholds
        self.default_mode = banks.manifest.default_mode             # a registered mode (the manifest checks it)
        self.params = banks.manifest.scoring.params()
        if self.has_positive:                                       # the bounded scale of ratio_b / dual_b / raise
            # the positive bank's spacing, floored by the negative bank's (a one-row or duplicated bank has none)
            self.params["pos_scale"] = positive_scale(bank_scale(self.pos, self.pos_nb, xp),
                                                      bank_scale(self.neg, self.neg_nb, xp))

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
            raise ValueError(f"features of shape {tuple(feats.shape)} do not match the banks: expected "
                             f"(B>=1, {self.grid[0]}, {self.grid[1]}, {self.d})")
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
        neg = bank_peak(a_neg, i_neg, per_img, self.neg, self.neg_nb, xp)
        pos, a_pos = None, None
        if self.has_positive:
            a_pos, i_pos = self.nearest("positive", flat)
            a_pos, i_pos = a_pos.reshape(b, h * w), i_pos.reshape(b, h * w)
            pos = bank_peak(a_pos, i_pos, per_img, self.pos, self.pos_nb, xp)
        return Evidence(a_neg, a_pos, neg, pos, self.grid, self.eps, xp,
                        lambda m: upsample_smooth(m, self.s_h, self.s_w, xp), self.params)

    def score(self, feats: Any, map_modes: Iterable[str] = MODES, modes: Optional[Iterable[str]] = None) -> ScoreBatch:
        """Scores of the modes (all by default), per-bank scores and patch maps, and image-sized maps of map_modes
        only (map_modes=(): no served map is upsampled or smoothed; a mode's score still builds the maps it needs)."""
        ev = self.evidence(feats)
        b = feats.shape[0]
        wanted = tuple(MODE_REGISTRY if modes is None else modes)
        sc = image_scores(ev, wanted)
        return ScoreBatch(
            scores={m: sc[m] for m in wanted}, s_neg=sc["s_neg"], s_pos=sc["s_pos"],
            patch_neg=ev.a_neg.reshape((b,) + self.grid),
            patch_pos=None if ev.a_pos is None else ev.a_pos.reshape((b,) + self.grid),
            maps={m: ev.image_map(map_of_mode(m)) for m in map_modes},
            evidence=ev)
