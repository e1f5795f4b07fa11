"""Image scores and anomaly maps of ExDD and its baselines from one pass of nearest-neighbour evidence.

Per patch p of an image and bank M: a(p) = min_m ||p - m|| (a- for the negative bank, a+ for the positive).
Reweighting (PatchCore's, as the ExDD authors' code does it), for one bank:
  s* = max_p a(p);  p* = argmax;  m* = nearest element of M to p*
  N(m*) = the k nearest elements of M to m*, m* itself dropped (precomputed at build time)
  t = sqrt(d);  q = exp(s*/t) / sum_{m in N(m*)} exp(||p* - m|| / t)
  negative bank: s- = (1 - q) s*;  positive bank: s+ = q s*
Map kinds (per patch, then bilinearly upsampled to the image and Gaussian-smoothed):
  neg    a-(p)                                   PatchCore's map
  ratio  a-(p) / (a+(p) + eps)                   the paper's map
  dual   a-(p) * (a-(p) / (a+(p) + eps))^gamma   ours (gamma = 1: a-^2 / (a+ + eps)): far from normal
                                                 AND near known defects
  raise  a-(p) * max(1, a-(p) / (a+(p) + eps_r))  raise-only: a patch nearer the normal bank than the defect bank
                                                 keeps its PatchCore evidence a-(p); one nearer a known defect is
                                                 amplified by its ratio. eps_r = RAISE_EPS_REL x the positive
                                                 bank's own scale (median distance of an element to its nearest
                                                 other element): the gain is bounded by a-/eps_r, never a-/1e-6
  ratio_b, dual_b  ratio and dual with eps_b = EPS_REL x that scale instead of 1e-6 (bounded scale)
  dual_b01         dual with eps = DUAL_EPS_REL (0.1) x that scale: dual's ranking, a bounded scale
Modes (MODE_REGISTRY; every mode is computed from the same evidence):
  patchcore  s-, map neg (negative bank only)
  exdd       the paper: s- / (s+ + eps), map ratio
  dual       the maximum of the smoothed dual map, map dual (the default of issue 10)
  dual_ratio dual's image score (eps 1e-6: unbounded), map ratio_b (the bounded ratio map)
  dual_bounded the served default (issue 19): the peak of the dual_b01 map (bounded), map ratio_b
  raise      raise-only: the maximum of the smoothed raise map, map raise
  fusion     a logistic model of (log s-, log max ratio map, log s+) fitted on held-out images (fusion.py)
  dual_topk  the mean of the top-k pixels of the smoothed dual_b01 map (k = params['topk'] x the pixels), map ratio_b:
             the default's evidence pooled over many patches instead of its one peak (issue 25)
  ratio_topk the mean of the top-k pixels of the served map ratio_b, map ratio_b
  head       the image head (issue 25): a logistic model over pooled statistics of the maps (HEAD_FEATURES) fitted
             at build time on the hold-out and the cross-fitted defective training images (offline/head.py);
             without a fitted head its fixed fallback, log of dual_topk's score; map ratio_b
Without a positive bank every mode is patchcore. BENCHMARKS.md ("The image decision") has the study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

from .fusion import FALLBACK as FUSION_FALLBACK
from .fusion import fusion_features, fusion_score

DEFAULT_GAMMA = 1.0
DEFAULT_MODE = "dual_bounded"  # issue 19: decided on 5 group splits of 3 dev sets (BENCHMARKS.md)
EPS_REL = 1.0  # eps_b = EPS_REL x the positive bank's median nearest-neighbour spacing (ratio_b, dual_b)
RAISE_EPS_REL = 0.1  # eps_r of the raise map: small, so a patch nearer a defect than any normal is raised
DUAL_EPS_REL = 0.1  # eps of the dual_b01 map (the default's image score): bounded, ranking as dual's
EPS_FLOOR = 1e-6
# The positive bank's spacing is taken as at least POS_SCALE_FLOOR_REL x the negative bank's (issue 26): a positive
# bank of one row, or of duplicated rows, has spacing 0, which made eps_b 1e-6 and silently removed the bounded
# scale. The negative bank's spacing is the distance at which the features resolve "the same surface"; a tenth of it
# never binds on a built bank (the tiny world's positive spacing is 0.42x its negative's) and keeps a patch equal to
# a lone training defect within a-^2 / (0.1 x 0.1 x the negative spacing) (tests/integration/test_degenerate_banks.py).
POS_SCALE_FLOOR_REL = 0.1
_SCALE_BLOCK = 65536  # rows per block of bank_scale (bounds its memory on a large negative bank)
TOPK_FRACTION = 0.01  # the top-k modes average the top 1 % of a map's pixels (params['topk'], in the manifest)


def bank_scale(vectors: Any, neighbors: Any, xp: Any) -> float:
    """Median distance of a bank element to its nearest other element: the bank's own distance scale (0 for a bank
    of one row or of duplicated rows)."""
    if vectors.shape[0] < 2 or neighbors.shape[1] == 0:
        return 0.0
    dist = []
    for i in range(0, vectors.shape[0], _SCALE_BLOCK):
        diff = vectors[i : i + _SCALE_BLOCK] - vectors[neighbors[i : i + _SCALE_BLOCK, 0]]
        dist.append(xp.sqrt((diff * diff).sum(axis=1)))
    return float(xp.median(xp.concatenate(dist)))


def positive_scale(pos_spacing: float, neg_spacing: float) -> float:
    """The positive bank's scale of the bounded maps: its own spacing, floored at POS_SCALE_FLOOR_REL x the negative
    bank's spacing."""
    return max(float(pos_spacing), POS_SCALE_FLOOR_REL * float(neg_spacing))


def positive_bank_problem(pos_spacing: float, neg_spacing: float, rows: int, distinct: int) -> Optional[str]:
    """Why a positive bank of rows rows (distinct of them different) is too small or degenerate for its own spacing
    to set the bounded scale (the floor of positive_scale then applies), or None."""
    floor = POS_SCALE_FLOOR_REL * float(neg_spacing)
    if distinct >= 2 and pos_spacing >= floor:
        return None
    what = f"{rows} row(s), {distinct} distinct" if distinct < rows else f"{rows} row(s)"
    return (
        f"the positive bank is too small or degenerate ({what}): its spacing {pos_spacing:.4g} is below "
        f"{POS_SCALE_FLOOR_REL} x the negative bank's ({neg_spacing:.4g}); the bounded scores use that floor "
        f"({floor:.4g}) instead. Add defect images (or synthetic defects) for a positive bank of its own scale"
    )


def bounded_eps(pos_scale: float, rel: float = EPS_REL) -> float:
    """eps relative to the positive bank's spacing, so a patch equal to a training defect scores a-/eps_b, not
    a-/1e-6."""
    return max(rel * float(pos_scale), EPS_FLOOR)


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
    nb = neighbors[m_star]  # (B, k-1) bank indices
    diff = feats[b, p_star][:, None, :] - bank[nb]  # (B, k-1, d)
    dn = xp.sqrt(xp.einsum("bkd,bkd->bk", diff, diff))
    t = float(feats.shape[-1]) ** 0.5
    q = reweight_q(s_star, dn, t, xp)
    return {"s_star": s_star, "p_star": p_star, "m_star": m_star, "q": q}


@dataclass
class Evidence:
    """One batch's evidence: per-patch distances to each bank, each bank's peak, and the smoothed maps.

    a_neg/a_pos: (B, P); neg/pos: bank_peak() of each bank (pos and a_pos None without a positive bank);
    smooth: (B, h, w) patch map -> (B, H, W) image map; params: gamma and the fusion parameters.
    """

    a_neg: Any
    a_pos: Optional[Any]
    neg: Dict[str, Any]
    pos: Optional[Dict[str, Any]]
    grid: tuple
    eps: float
    xp: Any
    smooth: Callable[[Any], Any]
    params: Dict[str, Any] = field(default_factory=dict)
    i_pos: Optional[Any] = None  # (B, P) index of each patch's nearest positive-bank row (issue 27)
    _maps: Dict[str, Any] = field(default_factory=dict)

    @property
    def s_neg(self) -> Any:
        return (1.0 - self.neg["q"]) * self.neg["s_star"]

    @property
    def s_pos(self) -> Any:
        return self.xp.zeros_like(self.s_neg) if self.pos is None else self.pos["q"] * self.pos["s_star"]

    def patch_map(self, kind: str) -> Any:
        """(B, h, w) patch map of a kind (MAP_KINDS); without a positive bank, always 'neg'."""
        kind = kind if self.pos is not None else "neg"
        b = self.a_neg.shape[0]
        return MAP_KINDS[kind](self).reshape((b,) + tuple(self.grid))

    @property
    def built_maps(self) -> Tuple[str, ...]:
        """The map kinds upsampled and smoothed so far (each is built once, when first needed)."""
        return tuple(self._maps)

    def image_map(self, kind: str) -> Any:
        """(B, H, W) upsampled and smoothed map of a kind, computed once per batch."""
        kind = kind if self.pos is not None else "neg"
        if kind not in self._maps:
            self._maps[kind] = self.smooth(self.patch_map(kind))
        return self._maps[kind]

    def map_max(self, kind: str) -> Any:
        """(B,) maximum of each image's smoothed map."""
        m = self.image_map(kind)
        return m.reshape(m.shape[0], -1).max(axis=1)

    def map_topk(self, kind: str, fraction: Optional[float] = None) -> Any:
        """(B,) mean of the top-k pixels of each image's smoothed map, k = fraction (params['topk']) x its pixels."""
        frac = float(self.params.get("topk", TOPK_FRACTION) if fraction is None else fraction)
        return topk_mean(self.image_map(kind), frac, self.xp)


def topk_count(n: int, fraction: float) -> int:
    """k of a top-k mean over n values: ceil(fraction x n), at least 1 and at most n."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"top-k fraction must be in (0, 1], got {fraction!r}")
    return max(1, min(n, int(math.ceil(fraction * n))))


def topk_mean(maps: Any, fraction: float, xp: Any) -> Any:
    """(B,) mean of the ceil(fraction x n) largest of each image's n values (maps (B, ...))."""
    flat = maps.reshape(maps.shape[0], -1)
    n = flat.shape[1]
    k = topk_count(n, fraction)
    return xp.partition(flat, n - k, axis=1)[:, n - k :].mean(axis=1)


def eps_b(ev: Evidence, rel: float = EPS_REL) -> float:
    """The bounded eps of an evidence: rel x the positive bank's scale (the scorer's params['pos_scale']), else eps."""
    return bounded_eps(ev.params["pos_scale"], rel) if "pos_scale" in ev.params else ev.eps


def a_pos_of(ev: Evidence) -> Any:
    """a+ of an evidence with a positive bank (without one, patch_map reads only 'neg')."""
    if ev.a_pos is None:
        raise ValueError("this map needs the positive bank's distances (a_pos): the banks have no positive bank")
    return ev.a_pos


def raise_map(ev: Evidence) -> Any:
    """a- max(1, a-/(a+ + eps_r)): never below PatchCore's a-, amplified only where a known defect is nearer."""
    return ev.a_neg * ev.xp.maximum(1.0, ev.a_neg / (a_pos_of(ev) + eps_b(ev, RAISE_EPS_REL)))


def dual_map(ev: Evidence, eps: float) -> Any:
    """a- (a-/(a+ + eps))^gamma: far from normal and near known defects (eps 1e-6, or a bounded one)."""
    return ev.a_neg * (ev.a_neg / (a_pos_of(ev) + eps)) ** float(ev.params.get("gamma", DEFAULT_GAMMA))


MAP_KINDS: Dict[str, Callable[[Evidence], Any]] = {
    "neg": lambda ev: ev.a_neg,
    "ratio": lambda ev: ev.a_neg / (a_pos_of(ev) + ev.eps),
    "dual": lambda ev: dual_map(ev, ev.eps),
    "ratio_b": lambda ev: ev.a_neg / (a_pos_of(ev) + eps_b(ev)),
    "dual_b": lambda ev: dual_map(ev, eps_b(ev)),
    "dual_b01": lambda ev: dual_map(ev, eps_b(ev, DUAL_EPS_REL)),
    "raise": raise_map,
}


@dataclass(frozen=True)
class Mode:
    """A scoring mode: its image score from the evidence and the map kind it serves."""

    name: str
    map_kind: str
    score: Callable[[Evidence], Any]
    summary: str


MODE_REGISTRY: Dict[str, Mode] = {}


def register_mode(mode: Mode) -> Mode:
    """Add a mode (its map kind must be in MAP_KINDS); the CLI choices and the scorer read the registry."""
    if mode.map_kind not in MAP_KINDS:
        raise ValueError(f"mode {mode.name!r}: unknown map kind {mode.map_kind!r}")
    MODE_REGISTRY[mode.name] = mode
    return mode


def fusion_inputs(ev: Evidence) -> Any:
    """(B, 3) inputs of the fusion model: log s-, log max of the smoothed ratio map, log s+."""
    return fusion_features(ev.s_neg, ev.map_max("ratio"), ev.s_pos, ev.xp)


def _fusion(ev: Evidence) -> Any:
    return fusion_score(fusion_inputs(ev), ev.params.get("fusion") or FUSION_FALLBACK, ev.xp)


# The image head's per-image statistics (issue 25), log where positive: the default's peak, the top-k means of the
# dual_b01 map and of the served ratio_b map, the mean of the served map, the share of its pixels above 1 (nearer a
# known defect than the normal bank, at the positive bank's spacing), and a-, a+ at the dual_b01 peak patch.
HEAD_FEATURES: Tuple[str, ...] = (
    "log_dual_peak",
    "log_dual_topk",
    "log_ratio_topk",
    "log_ratio_mean",
    "ratio_area",
    "log_neg_at_peak",
    "log_pos_at_peak",
)
HEAD_FALLBACK: Dict[str, Any] = {
    "features": ["log_dual_topk"],
    "mean": [0.0],
    "scale": [1.0],
    "coef": [1.0],
    "intercept": 0.0,
    "fitted": False,
    "note": "fixed fallback: log of the top-k mean of the dual_b01 map (dual_topk's score)",
}


def head_inputs(ev: Evidence, names: Tuple[str, ...] = HEAD_FEATURES, tiny: float = 1e-12) -> Any:
    """(B, len(names)) image statistics of the head (HEAD_FEATURES), each computed only when named."""
    xp = ev.xp
    log = lambda v: xp.log(xp.maximum(v, tiny))  # noqa: E731

    def at_peak() -> Tuple[Any, Any]:
        p = xp.argmax(MAP_KINDS["dual_b01"](ev), axis=1)
        b = xp.arange(p.shape[0])
        return ev.a_neg[b, p], a_pos_of(ev)[b, p]

    stats: Dict[str, Callable[[], Any]] = {
        "log_dual_peak": lambda: log(ev.map_max("dual_b01")),
        "log_dual_topk": lambda: log(ev.map_topk("dual_b01")),
        "log_ratio_topk": lambda: log(ev.map_topk("ratio_b")),
        "log_ratio_mean": lambda: log(ev.image_map("ratio_b").reshape(ev.a_neg.shape[0], -1).mean(axis=1)),
        "ratio_area": lambda: (ev.image_map("ratio_b").reshape(ev.a_neg.shape[0], -1) > 1.0).mean(axis=1),
        "log_neg_at_peak": lambda: log(at_peak()[0]),
        "log_pos_at_peak": lambda: log(at_peak()[1]),
    }
    unknown = [n for n in names if n not in stats]
    if unknown:
        raise ValueError(f"unknown head feature(s) {unknown}: expected some of {', '.join(HEAD_FEATURES)}")
    return xp.stack([xp.asarray(stats[n](), dtype=xp.float32) for n in names], axis=1)


def _head(ev: Evidence) -> Any:
    params = ev.params.get("head") or HEAD_FALLBACK
    return fusion_score(head_inputs(ev, tuple(params["features"])), params, ev.xp)


register_mode(Mode("patchcore", "neg", lambda ev: ev.s_neg, "negative bank only: PatchCore's reweighted score"))
register_mode(
    Mode("exdd", "ratio", lambda ev: ev.s_neg / (ev.s_pos + ev.eps), "the paper: s- / (s+ + eps) and the ratio map")
)
register_mode(
    Mode(
        "dual",
        "dual",
        lambda ev: ev.map_max("dual"),
        "ours: the peak of the smoothed map a- (a-/a+)^gamma, far from normal and near known defects",
    )
)
register_mode(
    Mode(
        "dual_ratio",
        "ratio_b",
        lambda ev: ev.map_max("dual"),
        "dual's image score (peak of a- (a-/a+)^gamma, unbounded) with the bounded ratio map a-/(a+ + eps_b)",
    )
)
register_mode(
    Mode(
        "dual_bounded",
        "ratio_b",
        lambda ev: ev.map_max("dual_b01"),
        "the default: the peak of a- (a-/(a+ + 0.1 x the positive bank's spacing))^gamma, bounded, with "
        "the bounded ratio map a-/(a+ + eps_b)",
    )
)
register_mode(
    Mode(
        "raise",
        "raise",
        lambda ev: ev.map_max("raise"),
        "raise-only: a- amplified by a-/(a+ + eps_r) only where a known defect is nearer than any normal",
    )
)
register_mode(
    Mode("fusion", "dual", _fusion, "logistic model of log s-, log max ratio map, log s+ fitted on the held-out images")
)

register_mode(
    Mode(
        "dual_topk",
        "ratio_b",
        lambda ev: ev.map_topk("dual_b01"),
        "the mean of the top-k pixels (params topk, a fraction) of the smoothed dual_b01 map, with the "
        "bounded ratio map",
    )
)
register_mode(
    Mode(
        "ratio_topk",
        "ratio_b",
        lambda ev: ev.map_topk("ratio_b"),
        "the mean of the top-k pixels (params topk, a fraction) of the bounded ratio map, which it serves",
    )
)
register_mode(
    Mode(
        "head",
        "ratio_b",
        _head,
        "image head: logistic model over pooled map statistics, fitted at build time on the hold-out and "
        "the cross-fitted defective training images (fallback: log of dual_topk's score)",
    )
)

MODES = tuple(MODE_REGISTRY)


def mode(name: str) -> Mode:
    """The registered mode of a name; ValueError naming the choices otherwise."""
    if name not in MODE_REGISTRY:
        raise ValueError(f"unknown scoring mode {name!r}: expected one of {', '.join(MODE_REGISTRY)}")
    return MODE_REGISTRY[name]


def image_scores(ev: Evidence, modes=None) -> Dict[str, Any]:
    """(B,) image score of each mode (all registered modes by default), plus s_neg and s_pos.
    Without a positive bank every mode scores as patchcore."""
    out = {"s_neg": ev.s_neg, "s_pos": ev.s_pos}
    for name in MODE_REGISTRY if modes is None else modes:
        out[name] = mode(name).score(ev) if ev.pos is not None else ev.s_neg
    return out
