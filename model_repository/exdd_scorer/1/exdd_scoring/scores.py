"""Image scores of ExDD and its baselines from per-patch nearest-neighbour distances.

Formulas (mode ``exdd``, as the authors' code does it), for a bank M and patches P of one image:
  a(p) = min_m ||p - m||;  s* = max_p a(p);  p* = argmax;  m* = nearest element of M to p*
  N(m*) = the k nearest elements of M to m*, m* itself dropped (precomputed at build time)
  t = sqrt(d);  q = exp(s*/t) / sum_{m in N(m*)} exp(||p* - m|| / t)
  negative bank: s- = (1 - q) s*;  positive bank: s+ = q s*
  exdd: s = s- / (s+ + eps);  pixel map A = a-(p) / (a+(p) + eps)
Modes:
  patchcore  s- alone (negative bank only, PatchCore with its reweighting); map a-(p)
  exdd       the paper, exactly as above
  exdd_peak  ours: the positive distance is read at the negative bank's peak patch p*-, i.e.
             s = s- / (a+(p*-) + eps); the same pixel map as exdd. The paper takes s+ at the
             patch farthest from the defect bank, usually background, which can swamp s-.
"""
from __future__ import annotations

from typing import Any, Dict

MODES = ("patchcore", "exdd", "exdd_peak")


def reweight_q(s_star: Any, dist_to_neighbors: Any, t: float, xp: Any) -> Any:
    """q = exp(s*/t) / sum_j exp(d_j/t), computed stably; s_star (B,), dist_to_neighbors (B, k-1)."""
    if dist_to_neighbors.shape[1] == 0:
        return xp.zeros_like(s_star)
    return 1.0 / xp.exp((dist_to_neighbors - s_star[:, None]) / t).sum(axis=1)


def bank_peak(patch_dist: Any, patch_idx: Any, feats: Any, bank: Any, neighbors: Any, xp: Any) -> Dict[str, Any]:
    """Per image: s*, p*, m*, and q of the bank's reweighting.

    patch_dist/patch_idx: (B, P) nearest distance and bank index per patch; feats: (B, P, d).
    """
    b = xp.arange(patch_dist.shape[0])
    p_star = xp.argmax(patch_dist, axis=1)
    s_star = patch_dist[b, p_star]
    m_star = patch_idx[b, p_star]
    nb = neighbors[m_star]                                   # (B, k-1) bank indices
    diff = feats[b, p_star][:, None, :] - bank[nb]            # (B, k-1, d)
    dn = xp.sqrt(xp.einsum("bkd,bkd->bk", diff, diff))
    t = float(feats.shape[-1]) ** 0.5
    q = reweight_q(s_star, dn, t, xp)
    return {"s_star": s_star, "p_star": p_star, "m_star": m_star, "q": q}


def image_scores(neg: Dict[str, Any], pos: Dict[str, Any] | None, a_pos: Any, eps: float, xp: Any) -> Dict[str, Any]:
    """Scores of every mode from the two banks' peaks (pos None: no positive bank).

    a_pos: (B, P) per-patch distance to the positive bank (None without one).
    Returns s_neg, s_pos and one (B,) score per mode; without a positive bank every mode is patchcore.
    """
    s_neg = (1.0 - neg["q"]) * neg["s_star"]
    out = {"s_neg": s_neg}
    if pos is None:
        out["s_pos"] = xp.zeros_like(s_neg)
        for m in MODES:
            out[m] = s_neg
        return out
    s_pos = pos["q"] * pos["s_star"]
    b = xp.arange(s_neg.shape[0])
    out["s_pos"] = s_pos
    out["patchcore"] = s_neg
    out["exdd"] = s_neg / (s_pos + eps)
    out["exdd_peak"] = s_neg / (a_pos[b, neg["p_star"]] + eps)
    return out
