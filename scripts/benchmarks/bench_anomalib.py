"""exdd side by side with anomalib's PatchCore, in one run: same weights file, same normals, same input size.

For each dataset (KSDD2 layout): the normals are exactly those exdd's negative bank gets (training
normals minus exdd's seeded 10% calibration hold-out, `holdout_split`), optionally a seeded subset of
them (--normals N, used by BOTH methods). The test split (or a seeded stratified --limit subset) is
scored by both; ground truth is exdd's mask reader at the input size, metrics are exdd's
(exdd/metrics.py) with bootstrap 90% intervals resampling test images.

anomalib side: `anomalib.models.Patchcore` (wide_resnet50_2, layer2+layer3, 3x3 avg pool,
num_neighbors 9, its own pre-processor: Resize(antialias) + ImageNet Normalize) with
pre_trained=False and the weights file loaded into its timm backbone (checked: every backbone
tensor present, and layer2/layer3 outputs equal to exdd's backbone on a probe). Fit = its training
step on the normals (read + pre-process + forward) + its k-center coreset; raw pred_score and
anomaly_map of its torch model (no post-processor normalisation: AUROC is rank-based).
exdd side: `exdd_modes()` builds banks with `build()` and scores with `Scorer`, every mode of
`exdd_scoring.MODES` (pluggable: any function with its signature can be added to EXDD_SIDES).

Fit times are wall and process CPU seconds (CPU is the figure to compare on a shared machine).
Speed: images/s end to end in process (read + pre-process + forward + scoring incl. the map), batch 1
and batch 8, on the same test images, both methods alternating, torch on the same threads.

  nice -n 10 .venv/bin/python -m scripts.benchmarks.bench_anomalib --dataset ../shared/data/ksdd1_dev \
      --weights ../shared/weights/wrn50-random0-bncal.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from exdd.datasets import Sample, duplicates_across, holdout_split, load_split
from exdd.images import image_size, read_image, read_mask
from exdd.metrics import auroc, bootstrap_auroc
from exdd.offline.build import BuildConfig, build, build_negative
from exdd.offline.extract import batches, run_extractor
from exdd.offline.features import build_extractor, make_projection
from exdd.offline.weights import load_backbone
from exdd_scoring import MODES, Scorer, load_banks
from scripts.common import cache_folder, peak_rss_gb
from scripts.harness import BenchResult, params_of

# ----------------------------------------------------------------------------- data


@dataclass
class Split:
    """The images both methods see for one dataset."""

    dataset: str
    normals: List[Sample]  # the negative bank's / anomalib's training images
    test: List[Sample]
    masks: np.ndarray  # (n_test, H, W) bool at the input size
    labels: np.ndarray  # (n_test,) 0/1
    note: str = ""


def make_split(
    dataset: str,
    input_hw: Tuple[int, int],
    cfg: BuildConfig,
    n_normals: Optional[int],
    limit: Optional[int],
    seed: int = 0,
    keep_leaked: bool = False,
) -> Split:
    """Training normals exactly as exdd's negative bank takes them; the (limited) test split with masks, without
    test images byte-identical to training images (as `offline evaluate`) unless keep_leaked."""
    train = load_split(dataset, "train")
    kept, _held = holdout_split(train, cfg.holdout, cfg.seed)
    normals = [s for s in kept if s.label == 0]
    note = f"{len(normals)} training normals (exdd's {cfg.holdout:.0%} hold-out removed)"
    if n_normals is not None and n_normals < len(normals):
        pick = np.sort(np.random.default_rng(seed).permutation(len(normals))[:n_normals])
        normals = [normals[i] for i in pick]
        note += f"; a seeded subset of {n_normals} of them for both methods"
    test = load_split(dataset, "test")
    leaked = {p for p, _ in duplicates_across(test, train)}
    if leaked and not keep_leaked:
        test = [s for s in test if s.path not in leaked]
        note += f"; {len(leaked)} test images that are copies of training images left out"
    if limit is not None and limit < len(test):
        rng = np.random.default_rng(seed)
        lab = np.array([s.label for s in test])
        n_def = max(1, int(round(limit * lab.mean())))
        idx = np.r_[
            rng.permutation(np.nonzero(lab == 1)[0])[:n_def], rng.permutation(np.nonzero(lab == 0)[0])[: limit - n_def]
        ]
        test = [test[i] for i in np.sort(idx)]
        note += f"; test limited to a seeded stratified {len(test)}"
    masks = np.stack([read_mask(s.mask, image_size(s.path), input_hw) for s in test])
    return Split(dataset, normals, test, masks, np.array([s.label for s in test]), note)


# ----------------------------------------------------------------------------- results


@dataclass
class MethodResult:
    """Per-image scores and maps of one method / mode on a Split's test images, and its costs."""

    scores: np.ndarray  # (n,)
    maps: Optional[np.ndarray]  # (n, H, W) float32 (may be shared between modes)
    fit_s: float
    info: Dict[str, Any] = field(default_factory=dict)


def metrics(r: MethodResult, split: Split, resamples: int, seed: int) -> Dict[str, Any]:
    """Image and pixel AUROC with bootstrap intervals (test images resampled)."""
    p, lo, hi = bootstrap_auroc(r.scores, split.labels, n=resamples, seed=seed)
    out = {"image_auroc": p, "image_ci90": [lo, hi]}
    if r.maps is not None and split.masks.any():
        # binned point (error < 1e-4) where the exact sort of every pixel would take too much memory
        pb, plo, phi = bootstrap_auroc(r.maps, split.masks, n=resamples, seed=seed, max_bins=16384)
        exact = r.maps.size <= 30_000_000
        out["pixel_auroc"] = auroc(r.maps.ravel(), split.masks.ravel()) if exact else pb
        out["pixel_ci90"] = [plo, phi]
        out["pixel_auroc_exact"] = exact
    return out


# ----------------------------------------------------------------------------- anomalib


def anomalib_model(weights: str, input_hw: Tuple[int, int], coreset_ratio: float, num_neighbors: int = 9):
    """anomalib's Patchcore with the weights file in its timm backbone (no download), and its pre-processor."""
    from anomalib.models import Patchcore

    pre = Patchcore.configure_pre_processor(image_size=tuple(input_hw))
    model = Patchcore(
        backbone="wide_resnet50_2",
        layers=("layer2", "layer3"),
        pre_trained=False,
        coreset_sampling_ratio=coreset_ratio,
        num_neighbors=num_neighbors,
        pre_processor=pre,
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )
    load_into_timm(model.model.feature_extractor.feature_extractor, weights)
    return model, pre.transform


def load_into_timm(net: torch.nn.Module, weights: str) -> None:
    """Load exdd's weights file into anomalib's timm feature extractor; raise unless it is complete and equal."""
    ours, _ = load_backbone(weights)  # torchvision names, checked shapes
    sd = ours.state_dict()
    own = net.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        raise RuntimeError(f"{weights}: anomalib's backbone tensors missing from the file: {missing[:5]}")
    res = net.load_state_dict({k: sd[k] for k in own}, strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    if not any(k.startswith("layer3.") for k in own) or not any(k.startswith("layer2.") for k in own):
        raise RuntimeError("anomalib's extractor lacks layer2/layer3")
    check_same_backbone(net, ours)


def check_same_backbone(net: torch.nn.Module, ours: torch.nn.Module) -> None:
    """Raise unless the timm extractor's (layer2, layer3) equal exdd's backbone's on a seeded probe."""
    probe = torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        l2, l3 = ours(probe)
        feats = net.eval()(probe)
    if len(feats) != 2:
        raise RuntimeError(f"anomalib's extractor gives {len(feats)} feature maps, expected layer2 and layer3")
    for a, b in zip((l2, l3), feats):
        if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-4):
            raise RuntimeError("anomalib's backbone output differs from exdd's with the same weights")


def anomalib_read(paths: Sequence[str], transform) -> torch.Tensor:
    """anomalib's image reader + its pre-processor transform per image (sizes vary), stacked."""
    from anomalib.data.utils import read_image as a_read

    return torch.stack([transform(a_read(p, as_tensor=True)) for p in paths]).as_subclass(torch.Tensor)


def anomalib_side(
    split: Split, weights: str, input_hw: Tuple[int, int], coreset_ratio: float, batch_size: int = 8, seed: int = 0
) -> Tuple[MethodResult, Callable]:
    """Fit anomalib PatchCore on the split's normals and score its test images; also its infer function."""
    model, transform = anomalib_model(weights, input_hw, coreset_ratio)
    net = model.model
    torch.manual_seed(seed)  # k-center start point and sparse projection
    t0, c0 = time.perf_counter(), time.process_time()
    net.train()
    with torch.no_grad():
        for i in range(0, len(split.normals), batch_size):
            net(anomalib_read([s.path for s in split.normals[i : i + batch_size]], transform))
    n_patches = sum(e.shape[0] for e in net.embedding_store)
    model.fit()  # KCenterGreedy coreset of every patch embedding
    fit_s, fit_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    net.eval()

    def infer(paths: Sequence[str]):
        with torch.no_grad():
            out = net(anomalib_read(paths, transform))
        return out.pred_score.reshape(-1).numpy(), out.anomaly_map[:, 0].numpy()

    scores = np.zeros(len(split.test), np.float32)
    maps = np.zeros((len(split.test),) + tuple(input_hw), np.float32)
    for i in range(0, len(split.test), batch_size):
        sc, mp = infer([s.path for s in split.test[i : i + batch_size]])
        scores[i : i + len(sc)], maps[i : i + len(sc)] = sc, mp
    info = {
        "memory_bank": list(net.memory_bank.shape),
        "patches": int(n_patches),
        "coreset_sampling_ratio": coreset_ratio,
        "num_neighbors": net.num_neighbors,
        "fit_cpu_s": fit_cpu_s,
    }
    return MethodResult(scores, maps, fit_s, info), infer


# ----------------------------------------------------------------------------- exdd


def exdd_modes(
    split: Split,
    weights: str,
    input_hw: Tuple[int, int],
    *,
    d: int = 256,
    cfg: Optional[BuildConfig] = None,
    cache: Optional[str] = None,
    work: str = "runs/bench_anomalib",
) -> Tuple[Dict[str, MethodResult], Callable]:
    """Banks with exdd's `build()` (negative bank from split.normals) and every mode of MODES on the test images.

    Returns {mode: MethodResult} (modes sharing a map share the array) and an infer(paths) -> (scores of
    the default mode, its map) for the speed measurement. cache: a folder of raw-feature caches
    (<cache>/<dataset>-HxW/{train,test}, offline/feature_cache.py) reused when they match.
    """
    cfg = cfg or BuildConfig()
    name = os.path.basename(os.path.normpath(split.dataset))
    model, info = build_extractor(weights, d, 0, input_hw)
    proj = make_projection(d, 0)
    needed = {"train": load_split(split.dataset, "train"), "test": split.test}
    caches = _caches(cache, name, input_hw, info["weights"], needed) if cache else None
    featurize = caches["train"].featurizer(proj) if caches else None
    bank_dir = os.path.join(work, f"{name}-{input_hw[0]}x{input_hw[1]}-d{d}")
    t0, c0 = time.perf_counter(), time.process_time()
    if featurize is None:
        from exdd.offline.build import model_featurizer

        featurize = model_featurizer(model, info, cfg.batch_size)
    neg = build_negative(featurize(split.normals, False, None), split.dataset, d, cfg, lambda *_: None)
    fit_neg_s = time.perf_counter() - t0  # like anomalib's fit: the normals' features + coreset
    res = build(split.dataset, bank_dir, model, info, cfg, featurize=featurize, negative_bank=neg)
    fit_s, fit_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        scorer = Scorer(load_banks(bank_dir, info))
    n, hw = len(split.test), tuple(input_hw)
    scores = {m: np.zeros(n, np.float32) for m in MODES}
    maps: Dict[str, np.ndarray] = {}
    errors: List[Tuple[str, str]] = []
    if caches:
        test = caches["test"]
        rows = [test.row_of(s.path) for s in split.test]  # every one present: _caches checked
        feed = ((split.test[i : i + 8], test.project(rows[i : i + 8], proj, np.float32), None) for i in range(0, n, 8))
    else:
        feed = ((bs, run_extractor(model, imgs), None) for bs, imgs, _ in batches(split.test, hw, 8, False, errors))
    alias: Dict[str, str] = {}  # modes sharing one map array (same object) share storage
    i = 0
    for bs, feats, _ in feed:
        r = scorer.score(feats, map_modes=MODES)
        if not alias:
            for m in MODES:
                alias[m] = next(k for k in MODES if r.maps[k] is r.maps[m])
        for m in MODES:
            scores[m][i : i + len(bs)] = r.scores[m]
            if alias[m] == m:
                maps.setdefault(m, np.zeros((n,) + hw, np.float32))[i : i + len(bs)] = r.maps[m]
        i += len(bs)
    if errors or i != n:
        raise RuntimeError(f"exdd could not read every test image: {errors[:3]}")
    shared = {m: maps[alias[m]] for m in MODES}
    cs = res.manifest.coreset
    out = {
        m: MethodResult(
            scores[m],
            shared[m],
            fit_s,
            {
                "negative_bank": cs.negative.size,
                "positive_bank": cs.positive.size,
                "d": d,
                "default_mode": scorer.default_mode,
                "features_from_cache": bool(caches),
                "fit_negative_s": fit_neg_s,
                "fit_cpu_s": fit_cpu_s,
            },
        )
        for m in MODES
    }
    default = scorer.default_mode

    def infer(paths: Sequence[str]):
        imgs = np.stack([read_image(p, hw) for p in paths])
        r = scorer.score(run_extractor(model, imgs), map_modes=(default,))
        return r.scores[default], r.maps[default]

    return out, infer


def _caches(cache: str, name: str, input_hw: Tuple[int, int], weights_id: str, needed: Dict[str, Sequence[Sample]]):
    """Existing raw-feature caches of the dataset when they match the weights and input size and hold every
    needed image (a subset cache would silently give exdd fewer images than anomalib), else None."""
    from exdd.offline.feature_cache import RawCache

    out = {}
    for split in ("train", "test"):
        folder = cache_folder(cache, name, input_hw, split)
        meta = os.path.join(folder, "meta.json")
        if not os.path.isfile(meta):
            print(f"cache: no {meta}: extracting with the model instead", file=sys.stderr)
            return None
        m = json.load(open(meta))
        if m.get("weights_id") != weights_id or list(m.get("input_size", [])) != list(input_hw):
            print(f"cache: {folder} has other weights or input size: not used", file=sys.stderr)
            return None
        c = RawCache(folder)
        missing = [x.path for x in needed.get(split, ()) if c.row_of(x.path) is None]
        if missing:
            print(f"cache: {folder} lacks {len(missing)} images (e.g. {missing[0]}): not used", file=sys.stderr)
            return None
        out[split] = c
    return out


# ----------------------------------------------------------------------------- reproduction


def torch_reflect(j: int, n: int) -> int:
    """Index j folded into [0, n) by whole-sample reflection (torch / kornia 'reflect' padding)."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    j %= period
    return j if j < n else period - j


def anomalib_map_matrix(n_out: int, n_in: int, sigma: float = 4.0) -> np.ndarray:
    """(n_out, n_in) operator of anomalib's map along one axis: F.interpolate (nearest) then its Gaussian blur
    (kernel 2 int(4 sigma + 0.5) + 1, 'reflect' padding)."""
    up = np.zeros((n_out, n_in))
    up[np.arange(n_out), np.minimum((np.arange(n_out) * n_in) // n_out, n_in - 1)] = 1.0
    r = int(4.0 * sigma + 0.5)
    x = np.arange(-r, r + 1)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w /= w.sum()
    g = np.zeros((n_out, n_out))
    for i in range(n_out):
        for off, wk in zip(x, w):
            g[i, torch_reflect(i + off, n_out)] += wk
    return (g @ up).astype(np.float32)


def anomalib_embed(net, images: torch.Tensor) -> Tuple[np.ndarray, Tuple[int, int]]:
    """anomalib's patch embeddings (B, P, 1536) of pre-processed images, exactly as its forward computes them."""
    with torch.no_grad():
        feats = net.feature_extractor(images)
        feats = {k: net.feature_pooler(v) for k, v in feats.items()}
        emb = net.generate_embedding(feats)
    b, _, h, w = emb.shape
    return net.reshape_embedding(emb).reshape(b, h * w, -1).numpy(), (h, w)


def equivalent_scores(
    emb: np.ndarray,
    bank: np.ndarray,
    grid: Tuple[int, int],
    out_hw: Tuple[int, int],
    *,
    k: int = 9,
    keep_self: bool = True,
    t: Optional[float] = 1.0,
    anomalib_map: bool = True,
) -> Tuple[np.ndarray, np.ndarray]:
    """exdd's scoring math (knn.nearest, topk_nearest, reweight_q, the map operators) on given embeddings and bank.

    Defaults = anomalib's configuration: the k = 9 nearest of m* including m* itself, t = 1, nearest upsampling.
    keep_self=False, k=3, t=None (sqrt d), anomalib_map=False = exdd's `patchcore` (m* dropped, t = sqrt d, bilinear
    upsampling + scipy-reflect Gaussian, exdd_scoring.resample).
    """
    from exdd_scoring import reweight_q, upsample_smooth, upsample_smooth_matrices
    from exdd_scoring.knn import nearest, sq_norms, topk_nearest

    bank = np.ascontiguousarray(bank, np.float32)
    b, P, d = emb.shape
    a, idx = nearest(np.ascontiguousarray(emb.reshape(-1, d), np.float32), bank, np, sq_norms(bank, np))
    a, idx = a.reshape(b, P).astype(np.float64), idx.reshape(b, P)
    r = np.arange(b)
    p_star = a.argmax(1)
    s_star = a[r, p_star]
    m_star = idx[r, p_star]
    _, nb = topk_nearest(bank[m_star], bank, k if keep_self else k, np)  # m* first (distance 0), then its neighbours
    nb = nb if keep_self else nb[:, 1:k]
    diff = emb[r, p_star][:, None, :].astype(np.float64) - bank[nb]
    dn = np.sqrt((diff**2).sum(-1))
    q = reweight_q(s_star, dn, float(d) ** 0.5 if t is None else t, np)
    scores = (1.0 - q) * s_star
    patch = a.reshape(b, *grid).astype(np.float32)
    if anomalib_map:
        sh, sw = anomalib_map_matrix(out_hw[0], grid[0]), anomalib_map_matrix(out_hw[1], grid[1])
    else:
        sh, sw = upsample_smooth_matrices(grid, out_hw, 4.0)
    return scores, upsample_smooth(patch, sh, sw, np)


def reproduce(
    split: Split,
    weights: str,
    input_hw: Tuple[int, int],
    coreset_ratio: float,
    cache: Optional[str],
    seed: int = 0,
    resamples: int = 500,
) -> Dict[str, Any]:
    """Deliverable 0 of issue 19: anomalib's PatchCore reproduced by exdd's scoring math on anomalib's own memory bank
    and embeddings, then each of exdd's departures alone (features, projection, coreset, hold-out, reweighting, map)."""
    from anomalib.models.components import KCenterGreedy
    from scipy.stats import pearsonr, spearmanr

    from exdd.offline.coreset import bank_size, chunked_kcenter

    model, transform = anomalib_model(weights, input_hw, coreset_ratio)
    net = model.model.eval()
    hw = tuple(input_hw)
    norm_emb, grid = [], None
    for i in range(0, len(split.normals), 8):
        e, grid = anomalib_embed(net, anomalib_read([s.path for s in split.normals[i : i + 8]], transform))
        norm_emb.append(e)
    norm_emb = np.concatenate(norm_emb)  # (n_normals, P, 1536)
    flat = torch.from_numpy(norm_emb.reshape(-1, norm_emb.shape[-1]))
    torch.manual_seed(seed)
    idx = np.asarray(KCenterGreedy(embedding=flat, sampling_ratio=coreset_ratio).select_coreset_idxs())
    bank = flat.numpy()[idx]
    net.memory_bank = torch.from_numpy(bank)
    a_scores, a_maps, test_emb = [], [], []
    for i in range(0, len(split.test), 8):
        x = anomalib_read([s.path for s in split.test[i : i + 8]], transform)
        with torch.no_grad():
            out = net(x)
        a_scores.append(out.pred_score.reshape(-1).numpy())
        a_maps.append(out.anomaly_map[:, 0].numpy())
        test_emb.append(anomalib_embed(net, x)[0])
    a_scores, a_maps, test_emb = np.concatenate(a_scores), np.concatenate(a_maps), np.concatenate(test_emb)
    y, masks = split.labels, split.masks

    def row(scores: np.ndarray, maps: np.ndarray) -> Dict[str, Any]:
        p, lo, hi = bootstrap_auroc(scores, y, n=resamples, seed=seed)
        return {
            "spearman_vs_anomalib": float(spearmanr(scores, a_scores).correlation),
            "max_rel_diff_vs_anomalib": float(np.max(np.abs(scores - a_scores) / np.abs(a_scores))),
            "map_pearson_vs_anomalib": float(pearsonr(maps.ravel(), a_maps.ravel())[0]),
            "map_max_abs_diff": float(np.max(np.abs(maps - a_maps))),
            "image_auroc": p,
            "image_ci90": [lo, hi],
            "pixel_auroc": auroc(maps.ravel(), masks.ravel()) if masks.any() else float("nan"),
        }

    rows = {"anomalib PatchCore (its own scores and map)": row(a_scores, a_maps)}
    rows["exdd math, anomalib configuration (same bank, same embeddings)"] = row(
        *equivalent_scores(test_emb, bank, grid, hw)
    )
    rows["departure: exdd's map (bilinear + Gaussian, scipy reflect)"] = row(
        *equivalent_scores(test_emb, bank, grid, hw, anomalib_map=False)
    )
    rows["departure: exdd's reweighting (k = 3, m* dropped, t = sqrt d)"] = row(
        *equivalent_scores(test_emb, bank, grid, hw, k=3, keep_self=False, t=None)
    )
    keep = bank_size(flat.shape[0], coreset_ratio, 0)
    cs = chunked_kcenter(flat.numpy(), keep)
    rows["departure: exdd's coreset (chunked k-center, same ratio)"] = row(
        *equivalent_scores(test_emb, flat.numpy()[np.sort(cs.indices)], grid, hw)
    )
    n_keep = len(split.normals) - int(round(0.1 * len(split.normals)))
    sub = np.sort(np.random.default_rng(seed).permutation(len(split.normals))[:n_keep])
    sub_flat = torch.from_numpy(norm_emb[sub].reshape(-1, norm_emb.shape[-1]))
    torch.manual_seed(seed)
    sub_idx = np.asarray(KCenterGreedy(embedding=sub_flat, sampling_ratio=coreset_ratio).select_coreset_idxs())
    rows["departure: exdd's 10 % hold-out (90 % of the normals, anomalib's coreset)"] = row(
        *equivalent_scores(test_emb, sub_flat.numpy()[sub_idx], grid, hw)
    )
    proj = make_projection(256, 0)
    rows["departure: projection to d = 256 (exdd's Gaussian, seed 0)"] = row(
        *equivalent_scores(test_emb @ proj, bank @ proj, grid, hw)
    )
    if cache:
        from exdd.offline.feature_cache import RawCache

        name = os.path.basename(os.path.normpath(split.dataset))
        caches = {sp: RawCache(cache_folder(cache, name, hw, sp)) for sp in ("train", "test")}

        def ours(samples):
            return np.stack(
                [np.asarray(caches[s.split].raw[caches[s.split].row_of(s.path)], np.float32) for s in samples]
            ).reshape(len(samples), -1, 1536)

        on, ot = ours(split.normals), ours(split.test)
        rows["departure: exdd's reader + extractor (its resize, float16 cache), anomalib's coreset indices"] = row(
            *equivalent_scores(ot, on.reshape(-1, 1536)[idx], grid, hw)
        )
        cs2 = chunked_kcenter(on.reshape(-1, 1536), keep)
        rows["all departures but hold-out: exdd `patchcore` on its own features, coreset, d = 1536"] = row(
            *equivalent_scores(
                ot,
                on.reshape(-1, 1536)[np.sort(cs2.indices)],
                grid,
                hw,
                k=3,
                keep_self=False,
                t=None,
                anomalib_map=False,
            )
        )
        p_on, p_ot = on @ proj, ot @ proj
        cs3 = chunked_kcenter(p_on.reshape(-1, 256), keep)
        rows["all departures but hold-out: exdd `patchcore`, d = 256"] = row(
            *equivalent_scores(
                p_ot,
                p_on.reshape(-1, 256)[np.sort(cs3.indices)],
                grid,
                hw,
                k=3,
                keep_self=False,
                t=None,
                anomalib_map=False,
            )
        )
    return {
        "normals": len(split.normals),
        "test": len(split.test),
        "defective": int(y.sum()),
        "bank": list(bank.shape),
        "coreset_ratio": coreset_ratio,
        "patches": int(flat.shape[0]),
        "rows": rows,
        "note": split.note,
    }


# ----------------------------------------------------------------------------- speed


def speed(
    infers: Dict[str, Callable], paths: Sequence[str], batch_sizes: Sequence[int], reps: int
) -> Dict[str, Dict[int, float]]:
    """Images/s per method and batch size: median over reps passes, the methods alternating."""
    out: Dict[str, Dict[int, List[float]]] = {k: {b: [] for b in batch_sizes} for k in infers}
    for k, f in infers.items():  # warm-up
        f(paths[:1])
    for _ in range(reps):
        for b in batch_sizes:
            for k, f in infers.items():
                t0 = time.perf_counter()
                for i in range(0, len(paths), b):
                    f(paths[i : i + b])
                out[k][b].append(len(paths) / (time.perf_counter() - t0))
    return {k: {b: float(np.median(v)) for b, v in d.items()} for k, d in out.items()}


# ----------------------------------------------------------------------------- main


def fmt(v: Dict[str, Any], key: str) -> str:
    if key not in v:
        return "-"
    lo, hi = v[key.replace("auroc", "ci90")]
    return f"{v[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", action="append", help="KSDD2-layout dataset (repeatable); default both dev sets")
    ap.add_argument("--weights", default="../shared/weights/wrn50-random0-bncal.safetensors")
    ap.add_argument("--input-size", default="632x224", help="HxW")
    ap.add_argument("--d", default="256", help="exdd projection dimension(s), comma-separated (e.g. 256,512)")
    ap.add_argument(
        "--coreset",
        type=float,
        default=None,
        help="anomalib coreset_sampling_ratio (default: exdd's negative ratio, 0.01)",
    )
    ap.add_argument(
        "--also-anomalib-default",
        action="store_true",
        help="also run anomalib with its default coreset_sampling_ratio 0.1",
    )
    ap.add_argument("--normals", type=int, default=None, help="seeded subset of the training normals (both methods)")
    ap.add_argument("--limit", type=int, default=None, help="seeded stratified subset of N test images")
    ap.add_argument("--cache", default=None, help="raw-feature cache folder (<cache>/<dataset>-HxW/{train,test})")
    ap.add_argument("--skip-anomalib", action="store_true")
    ap.add_argument("--keep-leaked", action="store_true", help="keep test images that are copies of training images")
    ap.add_argument("--skip-exdd", action="store_true")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--speed-images", type=int, default=16, help="test images per speed pass (0: no speed)")
    ap.add_argument("--speed-reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench_anomalib")
    ap.add_argument(
        "--reproduce",
        action="store_true",
        help="issue 19's reproduction: exdd's math on anomalib's bank and embeddings, then each departure "
        "(use with --normals / --limit; no hold-out: all training normals of the subset)",
    )
    a = ap.parse_args()
    hw = tuple(int(v) for v in a.input_size.lower().split("x"))
    cfg = BuildConfig()
    ratio = cfg.neg_ratio if a.coreset is None else a.coreset
    datasets = a.dataset or ["../shared/data/ksdd1_dev", "../shared/data/magnetic_tile"]
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    versions = {"exdd": __import__("exdd").__version__, "torch": torch.__version__}
    if not a.skip_anomalib:
        import anomalib
        import timm

        versions.update(anomalib=anomalib.__version__, timm=timm.__version__)
    dims = [int(v) for v in str(a.d).split(",")]
    record = BenchResult(
        "bench_anomalib",
        params_of(a),
        {
            "versions": versions,
            "input_size": list(hw),
            "weights": a.weights,
            "d": dims,
            "torch_threads": a.threads,
            "datasets": {},
        },
    )
    report = record.metrics
    machine = f"{record.machine['cpu']}, {record.machine['cores']} CPUs, torch threads {a.threads}"
    if a.reproduce:
        for ds in datasets:
            name = os.path.basename(os.path.normpath(ds))
            split = make_split(ds, hw, BuildConfig(holdout=0.0), a.normals, a.limit, a.seed, a.keep_leaked)
            rep = reproduce(split, a.weights, hw, ratio, a.cache, a.seed, a.resamples)
            report["datasets"][name] = rep
            record.save(os.path.join(a.out, "reproduce.json"))
            print(
                f"\n### {name}: {rep['note']}; {rep['test']} test images ({rep['defective']} defective); "
                f"anomalib's coreset {rep['bank'][0]} of {rep['patches']} patches (ratio {ratio:g})\n"
            )
            print(
                "| configuration | Spearman vs anomalib | max rel. score diff | map Pearson | map max abs diff | "
                "image AUROC [90% CI] | pixel AUROC |"
            )
            print("|---|---|---|---|---|---|---|")
            for k, v in rep["rows"].items():
                print(
                    f"| {k} | {v['spearman_vs_anomalib']:.4f} | {v['max_rel_diff_vs_anomalib']:.2e} | "
                    f"{v['map_pearson_vs_anomalib']:.4f} | {v['map_max_abs_diff']:.2e} | "
                    f"{v['image_auroc']:.3f} [{v['image_ci90'][0]:.3f}, {v['image_ci90'][1]:.3f}] | "
                    f"{v['pixel_auroc']:.3f} |",
                    flush=True,
                )
        print(f"\n{json.dumps(versions)}; {machine}")
        return
    for ds in datasets:
        name = os.path.basename(os.path.normpath(ds))
        split = make_split(ds, hw, cfg, a.normals, a.limit, a.seed, a.keep_leaked)
        print(
            f"== {name}: {split.note}; test {len(split.test)} images ({int(split.labels.sum())} defective)",
            file=sys.stderr,
            flush=True,
        )
        rows: Dict[str, Dict[str, Any]] = {}
        infers: Dict[str, Callable] = {}
        runs = [] if a.skip_anomalib else [(f"anomalib PatchCore (coreset {ratio:g})", ratio)]
        if a.also_anomalib_default and not a.skip_anomalib:
            runs.append(("anomalib PatchCore (coreset 0.1, its default)", 0.1))
        for label, r in runs:
            res, infer = anomalib_side(split, a.weights, hw, r, seed=a.seed)
            rows[label] = {**metrics(res, split, a.resamples, a.seed), "fit_s": res.fit_s, **res.info}
            infers.setdefault("anomalib", infer)
            print(f"{label}: {rows[label]}", file=sys.stderr, flush=True)
            del res
        if not a.skip_exdd:
            for d in dims:
                modes, infer = exdd_modes(
                    split, a.weights, hw, d=d, cfg=cfg, cache=a.cache, work=os.path.join(a.out, f"banks-d{d}")
                )
                tag = "" if len(dims) == 1 else f" (d={d})"
                for m, res in modes.items():
                    rows[f"exdd {m}{tag}"] = {
                        **metrics(res, split, a.resamples, a.seed),
                        "fit_s": res.fit_s,
                        **res.info,
                    }
                    print(f"exdd {m}{tag}: {rows[f'exdd {m}{tag}']}", file=sys.stderr, flush=True)
                infers.setdefault("exdd", infer)
                del modes
        sp = {}
        if a.speed_images > 0 and infers:
            sp = speed(infers, [s.path for s in split.test[: a.speed_images]], (1, 8), a.speed_reps)
        report["datasets"][name] = {
            "split": split.note,
            "n_normals": len(split.normals),
            "n_test": len(split.test),
            "n_defective": int(split.labels.sum()),
            "rows": rows,
            "images_per_s": sp,
            "speed_images": min(a.speed_images, len(split.test)),
            "speed_reps": a.speed_reps,
        }
        report["peak_rss_gb"] = peak_rss_gb()
        record.save(os.path.join(a.out, "bench.json"))
        print(f"\n### {name}: {split.note}; {len(split.test)} test images ({int(split.labels.sum())} defective)\n")
        print(
            "| method / mode | image AUROC [90% CI] | pixel AUROC [90% CI] | fit s (negative bank only) | bank "
            "| img/s b1 | img/s b8 |"
        )
        print("|---|---|---|---|---|---|---|")
        for k, v in rows.items():
            side = "anomalib" if k.startswith("anomalib") else "exdd"
            bank = (
                f"{v['memory_bank'][0]} x {v['memory_bank'][1]}"
                if "memory_bank" in v
                else f"{v['negative_bank']} + {v['positive_bank']} x {v['d']}"
            )
            s = (
                sp.get(side, {})
                if (side == "anomalib" and k == runs[0][0])
                or (side == "exdd" and k.startswith(f"exdd {v.get('default_mode')}") and v.get("d") == dims[0])
                else {}
            )
            fit = f"{v['fit_s']:.0f}" + (f" ({v['fit_negative_s']:.0f})" if "fit_negative_s" in v else "")
            print(
                f"| {k} | {fmt(v, 'image_auroc')} | {fmt(v, 'pixel_auroc')} | {fit} | {bank} | "
                f"{s.get(1, float('nan')):.2f} | {s.get(8, float('nan')):.2f} |",
                flush=True,
            )
    print(f"\n{json.dumps(versions)}; peak RSS {report['peak_rss_gb']:.1f} GB; {machine}")


if __name__ == "__main__":
    main()
