"""Building the two memory banks from a dataset, and calibrating the decision threshold.

Negative bank: all patches of the normal training images (minus a held-out part), greedy
k-center coreset at ``neg_ratio``. Positive bank: the defect patches of the defective training
images (minus the held-out part) and of any synthetic-defect folders, coreset at ``pos_ratio``.
A bank keeps max(ratio x N, min_size) elements, capped at N.

Deterministic in the images (issue 25): the training images are stacked in content order, the coreset has no
seed, and the seed only salts which images are held out (exdd.datasets.holdout_split): the same image files give
the same banks whatever their names or listing order.

Defect-patch rule: a patch is a defect patch when at least ``min_cover`` of its cell (its
stride-8 block of the resized input) is covered by the resized mask; a defective image whose
defect covers no cell that much gives its most covered cell, so thin defects still count.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import sys
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from exdd import __version__, defaults
from exdd.datasets import HOLDOUT_RULE, Sample, holdout_split, load_split, synthetic
from exdd.fileio import check_replaceable, staged_dir
from exdd_scoring import DEFAULT_MODE, MODES, Bank, BankPair, Scorer, save_bank
from exdd_scoring.fusion import fit_fusion
from exdd_scoring.knn import bank_neighbors
from exdd_scoring.line_rules import Confidence, LineRules, ReviewBand, RoiInfo
from exdd_scoring.manifest import Fusion, Scoring, Thresholds
from exdd_scoring.nearest import DefectSources
from exdd_scoring.provenance import BankStats, CoresetInfo, DefectPatchRule, FileError, OfflineManifest, Sources
from exdd_scoring.roi import ROI_PNG, patch_roi
from exdd_scoring.scores import (
    DEFAULT_GAMMA,
    HEAD_FEATURES,
    TOPK_FRACTION,
    bank_scale,
    fusion_inputs,
    head_inputs,
    positive_bank_problem,
)
from exdd_scoring.spec import FeatureSpec

from .calibrate import CROSSFIT_EXCLUDED, crossfit_threshold, fit_confidence, review_band
from .coreset import Coreset, bank_size, chunked_kcenter
from .extract import Extracted, extract
from .head import Crossfit, crossfit_evidence, fit_head
from .line_inputs import LineInputs
from .weights import is_random


@dataclass
class BuildConfig:
    """Everything that decides what the banks hold."""

    neg_ratio: float = defaults.NEG_RATIO
    pos_ratio: float = defaults.POS_RATIO
    min_size: int = defaults.MIN_BANK
    k: int = defaults.K
    min_cover: float = defaults.MIN_COVER
    holdout: float = defaults.HOLDOUT
    seed: int = 0  # salts the hold-out (which images calibrate); the coreset has no seed (issue 25)
    threshold_rule: str = "f1"
    target_fpr: float = defaults.TARGET_FPR
    default_mode: str = DEFAULT_MODE
    gamma: float = DEFAULT_GAMMA
    topk: float = TOPK_FRACTION  # the top-k fraction of the top-k modes (scoring.topk)
    chunk_rows: int = defaults.CHUNK_ROWS
    oversample: float = defaults.OVERSAMPLE
    batch_size: int = defaults.BATCH_SIZE


@dataclass
class BuildResult:
    manifest: OfflineManifest
    errors: List[Tuple[str, str]] = field(default_factory=list)


def defect_patches(covers: np.ndarray, min_cover: float) -> np.ndarray:
    """(n, h, w) coverage -> (n, h, w) bool defect-patch mask by the rule in the module doc."""
    sel = covers >= min_cover
    for i in range(covers.shape[0]):
        if not sel[i].any() and covers[i].max() > 0:
            sel[i].flat[int(np.argmax(covers[i]))] = True
    return sel


def make_bank(
    vectors: np.ndarray,
    ratio: float,
    min_size: int,
    k: int,
    chunk_rows: int,
    oversample: float,
    progress: Optional[Callable[[int], None]] = None,
) -> Tuple[Bank, Dict[str, Any]]:
    """Coreset of the (N, d) vectors, with within-bank neighbours; and its statistics (no seed: same rows, same
    bank)."""
    return make_bank_rows(vectors, ratio, min_size, k, chunk_rows, oversample, progress)[:2]


def make_bank_rows(
    vectors: np.ndarray,
    ratio: float,
    min_size: int,
    k: int,
    chunk_rows: int,
    oversample: float,
    progress: Optional[Callable[[int], None]] = None,
) -> Tuple[Bank, Dict[str, Any], np.ndarray]:
    """make_bank, and the rows of vectors it kept (sorted: the bank's row order)."""
    n = vectors.shape[0]
    keep = bank_size(n, ratio, min_size)
    cs = chunked_kcenter(vectors, keep, chunk_rows=chunk_rows, oversample=oversample, progress=progress)
    rows = np.sort(cs.indices)
    return (*bank_of(vectors[rows], n, cs, ratio, min_size, k), rows)


def bank_of(
    picked: np.ndarray, n: int, cs: Coreset, ratio: float, min_size: int, k: int
) -> Tuple[Bank, Dict[str, Any]]:
    """The bank of the coreset's rows (picked = rows at sorted cs.indices, of n) and its statistics."""
    vec = np.ascontiguousarray(picked, dtype=np.float32)
    nbr = bank_neighbors(vec, k, np)
    stats = {
        "patches": int(n),
        "size": int(vec.shape[0]),
        "ratio": ratio,
        "min_size": min_size,
        "coreset": cs.method,
        "radius": cs.radius,
        "radius_is_upper_bound": cs.radius_is_bound,
    }
    return Bank(vec, nbr), stats


PIXEL_QUANTILE = 0.999  # issue 27: the pixel threshold of a served map, over the held-out normals' pixels
PIXEL_STRIDE = 4  # ... every 4th pixel of each map (bounds the memory; the quantile barely moves)


def score_samples(
    scorer: Scorer, extracted_feats: np.ndarray, batch: int = 16, pixel_images: Optional[np.ndarray] = None
) -> Dict[str, np.ndarray]:
    """Scores of every mode for stored features (n, h, w, d), and the inputs of the fusion ('fusion_x') and of the
    image head ('head_x'); with pixel_images ((n,) bool), 'pixels:MODE': every PIXEL_STRIDE-th pixel inside the ROI
    of those images' served maps (what the pixel threshold is calibrated on)."""
    out: Dict[str, List[np.ndarray]] = {m: [] for m in MODES + ("fusion_x", "head_x")}
    inside = None if scorer.roi_pixels is None else np.asarray(scorer.roi_pixels).reshape(-1)
    for i in range(0, extracted_feats.shape[0], batch):
        want = None if pixel_images is None else np.asarray(pixel_images[i : i + batch], dtype=bool)
        map_modes = MODES if want is not None and want.any() else ()
        r = scorer.score(extracted_feats[i : i + batch].astype(np.float32), map_modes=map_modes)
        for m in MODES:
            out[m].append(r.scores[m])
        for m in map_modes:
            assert want is not None  # map_modes is empty without a mask to compare with
            flat = np.asarray(r.maps[m])[want].reshape(int(want.sum()), -1)
            out.setdefault(f"pixels:{m}", []).append(
                (flat if inside is None else flat[:, inside])[:, ::PIXEL_STRIDE].reshape(-1)
            )
        if scorer.has_positive:
            out["fusion_x"].append(fusion_inputs(r.evidence))
            out["head_x"].append(head_inputs(r.evidence))
    return {m: np.concatenate(v) if v else np.zeros(0) for m, v in out.items()}


def line_rules(
    scores: Dict[str, np.ndarray],
    labels: np.ndarray,
    values: Dict[str, float],
    roi: Optional[RoiInfo],
    classes: str,
    where: str,
) -> LineRules:
    """Issue 27's calibration per mode on the held-out scores: the review band (calibrate.review_band, containing
    the mode's threshold), the confidence model (calibrate.fit_confidence; none without both classes) and the pixel
    threshold of the served map (PIXEL_QUANTILE of the held-out normals' pixels, when score_samples kept them)."""
    review, conf, pixel = {}, {}, {}
    for m in MODES:
        rb = review_band(scores[m], labels, values.get(m))
        review[m] = ReviewBand(rb.pop("ok_below"), rb.pop("defect_above"), rb)
        c = fit_confidence(scores[m], labels)
        if c is not None:
            conf[m] = Confidence.from_dict(c, where, f"line.confidence.{m}")
        px = scores.get(f"pixels:{m}")
        if px is not None and px.size:
            pixel[m] = float(np.quantile(px, PIXEL_QUANTILE))
    rule = (
        f"quantile {PIXEL_QUANTILE} of the served map's pixels inside the ROI (every {PIXEL_STRIDE}th) over the "
        "held-out normal images"
        if pixel
        else ""
    )
    return LineRules(review, conf, pixel, rule, 0, roi, classes)


Featurize = Callable[[Sequence[Sample], bool, Optional[Callable[[int], None]]], Extracted]


def model_featurizer(model, features: Dict[str, Any], batch_size: int) -> Featurize:
    """featurize(samples, with_mask, progress) running the extractor on the image files."""
    size_hw, grid, d = tuple(features["input_size"]), tuple(features["grid"]), int(features["d"])
    return lambda samples, with_mask, progress: extract(
        samples, model, size_hw, grid, d, batch_size, with_mask=with_mask, progress=progress
    )


def build_negative(
    ex: Extracted, dataset: str, d: int, cfg: BuildConfig, bar, roi_patches: Optional[np.ndarray] = None
) -> Tuple[Bank, Dict[str, Any]]:
    """The negative bank (coreset of every normal patch inside the ROI) and its statistics."""
    if ex.features.shape[0] == 0:
        raise ValueError(f"{dataset}: none of the normal training images could be read")
    rows = ex.features.reshape(-1, d) if roi_patches is None else ex.features[:, roi_patches].reshape(-1, d)
    b = bar("coreset: negative", rows.shape[0])
    out = make_bank(rows, cfg.neg_ratio, cfg.min_size, cfg.k, cfg.chunk_rows, cfg.oversample, b.update if b else None)
    if b:
        b.close()
    return out


@dataclass
class Plan:
    """The samples a build uses: kept normals and defects, synthetic defects, held-out images."""

    normals: List[Sample]
    defects: List[Sample]
    synth: List[Sample]
    held: List[Sample]


def plan(
    dataset: str,
    cfg: BuildConfig,
    synthetic_dirs: Sequence[str] = (),
    layout: str = "auto",
    synthetic_limit: Optional[int] = None,
) -> Plan:
    """Split the dataset's training images (and the synthetic folders) into the build's sample sets."""
    train = load_split(dataset, "train", layout)
    if not train:
        raise ValueError(f"{dataset}: no training images")
    kept, held = holdout_split(train, cfg.holdout, cfg.seed)
    normals = [s for s in kept if s.label == 0]
    defects = [s for s in kept if s.label == 1]
    synth: List[Sample] = []
    for sd in synthetic_dirs:
        synth += synthetic(sd)
    if synthetic_limit is not None:
        synth = synth[:synthetic_limit]
    if not normals:
        raise ValueError(f"{dataset}: no normal training images for the negative bank")
    return Plan(normals, defects, synth, held)


def calibration_scorer(pair: BankPair) -> Scorer:
    """The scorer of the held-out calibration (bank warnings are the build's own business)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return Scorer(pair)


# held_scores(pair) -> (score_samples' dict, labels) of the held-out images, or None without any; called
# again after the fusion is fitted (the held-out features are kept between the calls)
def bank_file(name: str) -> bool:
    """Whether a file name is one a bank folder holds (what `--out` may hold before it is replaced)."""
    return name in ("manifest.json", ROI_PNG) or name.endswith(".npy")


HeldScores = Callable[[BankPair], Optional[Tuple[Dict[str, np.ndarray], np.ndarray]]]


def build(
    dataset: str,
    out_dir: str,
    model,
    features: Dict[str, Any],
    cfg: BuildConfig,
    synthetic_dirs: Sequence[str] = (),
    layout: str = "auto",
    progress_factory: Optional[Callable[[str, int], Any]] = None,
    featurize: Optional[Featurize] = None,
    synthetic_limit: Optional[int] = None,
    negative_bank: Optional[Tuple[Bank, Union[BankStats, Dict[str, Any]]]] = None,
    projection: Optional[np.ndarray] = None,
    line: Optional[LineInputs] = None,
) -> BuildResult:
    """Build and save the banks of a dataset; returns the manifest written and the per-file errors.

    featurize defaults to running ``model`` on the images (other featurizers serve cached features);
    negative_bank (bank, stats) reuses a negative bank built from the same images and settings;
    projection: the model's fitted projection matrix (saved with the banks; None for a random one);
    line: the ROI and defect classes (issue 27; patches outside the ROI enter neither bank).
    """

    def bar(desc: str, total: int):
        return progress_factory(desc, total) if progress_factory else None

    check_replaceable(out_dir, bank_file, "banks")  # before the work: --out is replaced whole at the end
    d = int(features["d"])
    featurize = featurize or model_featurizer(model, features, cfg.batch_size)
    p = plan(dataset, cfg, synthetic_dirs, layout, synthetic_limit)
    errors: List[Tuple[str, str]] = []

    def run(samples, desc, with_mask) -> Extracted:
        b = bar(desc, len(samples))
        ex = featurize(samples, with_mask, b.update if b else None)
        if b:
            b.close()
        errors.extend(ex.errors)
        return ex

    line = line or LineInputs()
    roi_patches = None if line.roi is None else patch_roi(line.roi, tuple(features["grid"]))
    if negative_bank is not None:
        negative, neg_stats = negative_bank
    else:
        negative, neg_stats = build_negative(
            run(p.normals, "features: normal", False), dataset, d, cfg, bar, roi_patches
        )

    pos_sources = {"real": p.defects, "synthetic": p.synth}
    pos_vectors, pos_counts, pos_ex = [], {}, {}
    row_images: List[np.ndarray] = []  # per defect patch, its image in `images` (issue 27)
    images: List[str] = []
    classes: List[str] = []
    for name, samples in pos_sources.items():
        pos_counts[name] = 0
        if not samples:
            continue
        ex = run(samples, f"features: {name} defects", True)
        assert ex.covers is not None  # extracted with their masks
        covers = ex.covers if roi_patches is None else ex.covers * roi_patches[None]
        sel = defect_patches(covers, cfg.min_cover)
        pos_vectors.append(ex.features[sel])
        pos_counts[name] = int(ex.features.shape[0])
        pos_ex[name] = (ex.features, sel)
        row_images.append(len(images) + np.nonzero(sel)[0])
        for smp in ex.samples:
            images.append(defect_source_name(smp, dataset, name))
            classes.append(line.classes.get(images[-1], smp.kind or "") if name == "real" else "synthetic")
    positive, pos_stats, sources = None, {"patches": 0, "size": 0}, None
    if pos_vectors and sum(v.shape[0] for v in pos_vectors) > 0:
        allpos = np.concatenate(pos_vectors)
        positive, pos_stats, kept = make_bank_rows(
            allpos, cfg.pos_ratio, cfg.min_size, cfg.k, cfg.chunk_rows, cfg.oversample
        )
        sources = DefectSources.of(np.concatenate(row_images), images, classes).subset(kept)
    else:
        print("warning: no defect patches for the positive bank: exdd modes fall back to patchcore", file=sys.stderr)

    held_ex: List[Extracted] = []

    def held_scores(pair: BankPair):
        if not p.held:
            return None
        if not held_ex:
            held_ex.append(run(p.held, "features: held-out", True))
        ex = held_ex[0]
        labels = np.array([s.label for s in ex.samples])
        return score_samples(calibration_scorer(pair), ex.features, pixel_images=labels == 0), labels

    def head_crossfit(manifest: OfflineManifest) -> Optional[Crossfit]:
        if positive is None or "real" not in pos_ex:
            return None
        synth = pos_ex["synthetic"][0][pos_ex["synthetic"][1]] if "synthetic" in pos_ex else None
        return build_crossfit(negative, manifest, *pos_ex["real"], synth, cfg, line.roi)

    return finish(
        dataset,
        out_dir,
        features,
        cfg,
        synthetic_dirs,
        p,
        (negative, neg_stats),
        (positive, pos_stats),
        pos_counts,
        errors,
        held_scores,
        projection,
        head_crossfit,
        line,
        sources,
    )


def defect_source_name(sample: Sample, dataset: str, kind: str) -> str:
    """How the answer names a positive-bank patch's image: its path relative to the dataset root (real defects),
    synthetic:<folder>/<file> for a synthetic one."""
    if kind == "real":
        return os.path.relpath(sample.path, dataset)
    folder = os.path.dirname(sample.path)
    return f"synthetic:{os.path.basename(folder)}/{os.path.basename(sample.path)}"


def image_head(
    held_x: np.ndarray, held_labels: np.ndarray, crossfit_x: Optional[np.ndarray], seed: int, where: str
) -> Fusion:
    """The image head (offline/head.py) fitted on the held-out images and the cross-fitted defective training
    images (crossfit_x: None without any), as the manifest stores it."""
    x, y = np.asarray(held_x).reshape(-1, len(HEAD_FEATURES)), np.asarray(held_labels).astype(int)
    cf = 0 if crossfit_x is None else int(crossfit_x.shape[0])
    if cf:
        x, y = np.concatenate([x, crossfit_x]), np.r_[y, np.ones(cf, int)]
    return Fusion.from_dict(fit_head(x, y, seed, crossfit=cf), where, "scoring.head")


# The image head's folds are fixed, not the build's --seed: the seed means only which images are held out, and
# the same kept images give the same manifest (tests/test_build_determinism.py).
HEAD_SEED = 0


def build_crossfit(
    negative: Bank,
    manifest: OfflineManifest,
    features: np.ndarray,
    sel: np.ndarray,
    synth: Optional[np.ndarray],
    cfg: BuildConfig,
    roi: Optional[np.ndarray] = None,
) -> Crossfit:
    """The cross-fitted evidence of the real defective training images (offline/head.py: the image head's
    statistics, every mode's score for the threshold): each fold's positive bank built as the build's own
    (make_bank with cfg's settings), the folds fixed (HEAD_SEED), scored inside the line's ROI."""
    return crossfit_evidence(
        negative,
        manifest,
        features,
        sel,
        synth,
        lambda v: make_bank(v, cfg.pos_ratio, cfg.min_size, cfg.k, cfg.chunk_rows, cfg.oversample)[0],
        HEAD_SEED,
        roi=roi,
    )


# head_crossfit(manifest) -> the cross-fitted defective training images' head statistics and scores, or None
HeadCrossfit = Callable[[OfflineManifest], Optional[Crossfit]]


def finish(
    dataset: str,
    out_dir: str,
    features: Dict[str, Any],
    cfg: BuildConfig,
    synthetic_dirs: Sequence[str],
    p: Plan,
    neg: Tuple[Bank, Union[BankStats, Dict[str, Any]]],
    pos: Tuple[Optional[Bank], Dict[str, Any]],
    pos_counts: Dict[str, int],
    errors: List[Tuple[str, str]],
    held_scores: HeldScores,
    projection: Optional[np.ndarray] = None,
    head_crossfit: Optional[HeadCrossfit] = None,
    line: Optional[LineInputs] = None,
    sources: Optional[DefectSources] = None,
) -> BuildResult:
    """Manifest, fusion and threshold calibrated on the held-out images (scored by held_scores), banks saved.

    errors is the list of unreadable files so far; held_scores may append the held-out ones to it
    (they go to the BuildResult, not to the manifest's sources).
    """
    (negative, neg_stats), (positive, pos_stats) = neg, pos
    if positive is not None:  # issue 26: a one-row or duplicated positive bank has no spacing of its own
        problem = positive_bank_problem(
            bank_scale(positive.vectors, positive.neighbors, np),
            bank_scale(negative.vectors, negative.neighbors, np),
            positive.vectors.shape[0],
            np.unique(positive.vectors, axis=0).shape[0],
        )
        if problem:
            print(f"warning: {problem}", file=sys.stderr)
    where = f"{out_dir}: manifest"
    manifest = OfflineManifest(
        features=FeatureSpec.from_dict(features, f"{where} features"),
        weights_note=(
            "RANDOM-INIT BACKBONE: detection quality is not meaningful" if is_random(features["weights"]) else ""
        ),
        k=cfg.k,
        coreset=CoresetInfo(
            BankStats.from_dict(neg_stats, where, "coreset.negative"),
            BankStats.from_dict(pos_stats, where, "coreset.positive"),
            cfg.seed,
            cfg.chunk_rows,
            cfg.oversample,
        ),
        defect_patch_rule=DefectPatchRule(
            cfg.min_cover, "cell coverage by the resized mask >= min_cover; else the most covered cell"
        ),
        sources=Sources(
            dataset,
            len(p.normals),
            pos_counts.get("real", 0),
            pos_counts.get("synthetic", 0),
            tuple(synthetic_dirs),
            sum(1 for s in p.held if s.label == 0),
            sum(1 for s in p.held if s.label == 1),
            tuple(FileError(*e) for e in errors),
            HOLDOUT_RULE,
            float(cfg.holdout),
        ),
        default_mode=cfg.default_mode,
        modes=MODES,
        scoring=Scoring(float(cfg.gamma), None, float(cfg.topk)),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        tool=f"exdd {__version__}",
    )
    line = line or LineInputs()
    roi_info = None
    if line.roi is not None:
        inside = patch_roi(line.roi, manifest.features.grid)
        roi_info = RoiInfo(
            hashlib.sha256(line.roi_png or b"").hexdigest(), line.roi_source, int(inside.sum()), int(inside.size)
        )
    # calibrate on the held-out images with the banks just built (unreadable held-out files are not sources)
    pair = BankPair(negative, positive, manifest, line.roi, sources)
    values: Dict[str, float] = {}
    detail: Dict[str, Dict[str, Any]] = {}
    held = held_scores(pair)
    if held is not None:
        scores, labels = held
        crossfit = None
        if positive is not None:  # fit the fusion and the image head, then score them
            fusion = Fusion.from_dict(fit_fusion(scores["fusion_x"], labels), where)
            crossfit = head_crossfit(manifest) if head_crossfit else None
            crossfit = crossfit.rows() if crossfit is not None else None
            head = image_head(
                scores["head_x"], labels, crossfit.inputs if crossfit is not None else None, HEAD_SEED, where
            )
            pair.manifest = manifest = replace(manifest, scoring=replace(manifest.scoring, fusion=fusion, head=head))
            rescored = held_scores(pair)
            assert rescored is not None  # p.held: as above
            scores, labels = rescored
        for m in MODES:  # issue 25, rule 7: F1 on the held-out and the cross-fitted defective training images
            cf_scores = None if crossfit is None or m in CROSSFIT_EXCLUDED else crossfit.scores.get(m)
            t = crossfit_threshold(scores[m], labels, cf_scores, cfg.threshold_rule, cfg.target_fpr)
            values[m] = t["value"]
            detail[m] = t
        rules = line_rules(scores, labels, values, roi_info, line.classes_source, where)
    else:
        print("warning: no held-out images (--holdout 0): no calibrated threshold", file=sys.stderr)
        rules = LineRules(roi=roi_info, classes=line.classes_source)
    manifest = replace(
        manifest, threshold=Thresholds(cfg.threshold_rule, float(cfg.target_fpr), values, detail), line=rules
    )
    with staged_dir(out_dir, bank_file, "banks") as tmp:  # written beside, fsync'd, swapped in whole
        manifest = save_bank(tmp, negative, positive, manifest, projection, line.roi, line.roi_png, sources)
    return BuildResult(manifest, errors)
