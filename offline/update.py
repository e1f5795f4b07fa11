"""Incremental bank updates: teach new normal and defect images without a rebuild.

Only the new images are extracted. Their patches join the banks by greedy k-center continued
from the existing centres (``extend_kcenter``: picks until the bank's ratio rule is met *and*
every new patch lies within the parent's coverage radius, so the radius never grows); the
within-bank neighbours are extended (new rows against the whole bank, old rows only against
the new rows) instead of recomputed; the thresholds are recalibrated when calibration images are
given, else kept from the parent; the features, and a fitted projection (projection.npy), are the parent's,
never refitted. The new bank directory's manifest records its parent (sha256
of the parent manifest), the images added, the bank growth and when, appended to the parent's
update history.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from exdd import __version__, defaults
from exdd.datasets import DatasetError, Sample, canonical_order
from exdd.fileio import check_replaceable, staged_dir
from exdd.images import is_image_name
from exdd_scoring import MODES, Bank, BankPair, Scorer, load_banks, load_projection, save_bank
from exdd_scoring.bank import MANIFEST, BankError, sha256_file
from exdd_scoring.knn import bank_neighbors, topk_nearest
from exdd_scoring.manifest import REBUILD, Thresholds
from exdd_scoring.nearest import DefectSources
from exdd_scoring.provenance import Added, BankStats, FileError, OfflineManifest, Parent, SizeChange, UpdateRecord
from exdd_scoring.roi import ROI_PNG, patch_roi

from .build import Featurize, bank_file, defect_patches, make_bank, score_samples
from .calibrate import threshold
from .coreset import bank_size, extend_kcenter

NORMAL_VERDICTS = ("ok", "good", "normal", "pass", "false_alarm", "false_positive", "fp", "0", "false")
DEFECT_VERDICTS = ("defect", "ng", "bad", "fail", "true_defect", "missed_defect", "fn", "1", "true")


@dataclass
class UpdateResult:
    """The manifest written, the per-file errors and the seconds each stage took."""

    manifest: OfflineManifest
    errors: List[Tuple[str, str]] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)


def extend_neighbors(old: Bank, new_vectors: np.ndarray, k: int) -> np.ndarray:
    """Within-bank neighbours (n_old + n_new, k-1) of the bank old + new_vectors, reusing old's.

    Old rows keep their k-1 nearest among (their old neighbours, their k-1 nearest new rows);
    new rows get theirs from the whole bank. Same neighbour distances as ``bank_neighbors`` on
    the concatenation (indices may differ only between equidistant rows).
    """
    allv = np.ascontiguousarray(np.concatenate([old.vectors, new_vectors]), dtype=np.float32)
    n_old, n_new = old.vectors.shape[0], new_vectors.shape[0]
    n = n_old + n_new
    if k < 2 or n < 2:
        return np.zeros((n, 0), dtype=np.int32)
    if n_new == 0:
        return old.neighbors.astype(np.int32)
    kk = min(k, n)
    if old.neighbors.shape[1] != kk - 1 or n_old < kk:
        return bank_neighbors(allv, k, np)
    newv = allv[n_old:]
    # new rows against the whole bank, self removed as bank_neighbors does
    _, idx = topk_nearest(newv, allv, kk, np)
    own = (np.arange(n_new) + n_old)[:, None]
    keep = idx != own
    keep[~(~keep).any(axis=1), -1] = False
    nbr_new = idx[keep].reshape(n_new, kk - 1)
    # old rows: best k-1 of old neighbours and nearest new rows
    m = min(kk - 1, n_new)
    _, near_new = topk_nearest(allv[:n_old], newv, m, np)
    cand = np.concatenate([old.neighbors.astype(np.int64), near_new + n_old], axis=1)
    diff = allv[cand] - allv[:n_old, None, :]
    dist = np.einsum("ijk,ijk->ij", diff, diff)
    order = np.argsort(dist, axis=1, kind="stable")[:, : kk - 1]
    nbr_old = np.take_along_axis(cand, order, axis=1)
    return np.concatenate([nbr_old, nbr_new]).astype(np.int32)


def extend_bank(
    bank: Optional[Bank], vectors: np.ndarray, stats: BankStats, k: int, default_ratio: float = defaults.NEG_RATIO
) -> Tuple[Bank, BankStats]:
    """bank grown by the coreset of vectors (N, d) continued from its centres; updated stats.

    The size rule is the bank's (stats.ratio, stats.min_size), else the build's defaults (default_ratio,
    defaults.MIN_BANK) where it records none (an empty positive bank records only its size)."""
    ratio = default_ratio if stats.ratio is None else stats.ratio
    min_size = defaults.MIN_BANK if stats.min_size is None else stats.min_size
    n_new = int(vectors.shape[0])
    if bank is None or bank.size == 0:
        new_bank, made = make_bank(vectors, ratio, min_size, k, defaults.CHUNK_ROWS, defaults.OVERSAMPLE)
        made["added_patches"], made["picked"] = n_new, made["size"]
        return new_bank, BankStats.from_dict(made, "update", "coreset")
    patches = stats.patches + n_new
    # the bank's size rule on all patches, and at least ratio x the new patches: taught images always count
    min_picks = max(0, bank_size(patches, ratio, min_size) - bank.size, int(np.ceil(ratio * n_new)))
    old_radius = 0.0 if stats.radius is None else stats.radius
    cs = extend_kcenter(bank.vectors, vectors, min_picks, old_radius)
    picked = np.ascontiguousarray(vectors[np.sort(cs.indices)], dtype=np.float32)
    nbr = extend_neighbors(bank, picked, k)
    out = Bank(np.ascontiguousarray(np.concatenate([bank.vectors, picked]), dtype=np.float32), nbr)
    st = replace(
        stats,
        patches=patches,
        size=out.size,
        added_patches=n_new,
        picked=int(picked.shape[0]),
        radius=max(old_radius, float(cs.radius)),
        added_radius=float(cs.radius),
        added_radius_is_bound=bool(cs.radius_is_bound),
        added_method=cs.method,
    )
    return out, st


def _grown_sources(
    sources: Optional[DefectSources],
    before: int,
    positive: Bank,
    vec: np.ndarray,
    images: np.ndarray,
    samples: Sequence[Sample],
) -> Optional[DefectSources]:
    """The parent's defect sources (issue 27) with the rows the update appended to the positive bank: each new row is
    one of vec (the new defect patches, of images[i]'s sample), found by its bytes; their class is unknown ("").
    None when the parent had none."""
    if sources is None or positive.size == before:
        return sources if sources is None or positive.size == sources.rows.shape[0] else None
    at = {row.tobytes(): int(i) for i, row in enumerate(np.ascontiguousarray(vec, dtype=np.float32))}
    names = [os.path.abspath(s.path) for s in samples]
    new_rows = [len(sources.images) + int(images[at[r.tobytes()]]) for r in positive.vectors[before:]]
    return DefectSources.of(
        np.r_[sources.rows, new_rows], list(sources.images) + names, list(sources.classes) + [""] * len(names)
    )


def _add_record(samples: Sequence[Sample]) -> List[str]:
    return [os.path.abspath(s.path) for s in samples]


def update(
    parent_dir: str,
    out_dir: str,
    normals: Sequence[Sample],
    defects: Sequence[Sample],
    featurize: Featurize,
    calibration: Optional[Sequence[Sample]] = None,
    min_cover: Optional[float] = None,
    note: str = "",
    progress_factory: Optional[Callable[[str, int], Any]] = None,
    input_errors: Sequence[Tuple[str, str]] = (),
) -> UpdateResult:
    """Write parent's banks grown by the normals (negative bank) and defects (positive bank) into out_dir.

    calibration: labelled images (e.g. the parent's held-out split) to recalibrate the thresholds
    with the updated banks; without them the parent's thresholds are kept (and recorded so).
    """
    if os.path.abspath(parent_dir) == os.path.abspath(out_dir):
        raise ValueError(f"{out_dir}: the updated banks must go to a new directory, not over their parent")
    if os.path.exists(os.path.join(out_dir, MANIFEST)):
        raise ValueError(f"{out_dir}: already holds banks; choose a new directory")
    check_replaceable(out_dir, bank_file, "banks")  # a half-written earlier try is replaced, nothing else
    if not normals and not defects:
        raise ValueError("nothing to add: give --normal and/or --defect images (or --from-results verdicts)")
    t0 = time.perf_counter()
    parent = load_banks(parent_dir, manifest_cls=OfflineManifest)
    pm = parent.manifest
    if pm.coreset is None:
        raise BankError(
            f"{os.path.join(parent_dir, MANIFEST)}: no coreset section (the banks' size rule and seed): "
            f"cannot update them; {REBUILD}"
        )
    d, k = pm.features.d, pm.k
    given = {s.path: i for i, s in enumerate(list(normals) + list(defects))}  # the records keep the given order
    normals, defects = canonical_order(normals), canonical_order(defects)  # as build stacks them: names do not matter
    if min_cover is None:
        min_cover = defaults.MIN_COVER if pm.defect_patch_rule is None else pm.defect_patch_rule.min_cover
    errors: List[Tuple[str, str]] = list(input_errors)
    seconds: Dict[str, float] = {"load": time.perf_counter() - t0}

    def run(samples, desc, with_mask):
        b = progress_factory(desc, len(samples)) if progress_factory else None
        ex = featurize(samples, with_mask, b.update if b else None)
        if b:
            b.close()
        errors.extend(ex.errors)
        return ex

    neg_stats, pos_stats = pm.coreset.negative, pm.coreset.positive
    negative, positive = parent.negative, parent.positive
    added: Dict[str, Any] = {"normal": [], "defect": []}
    t1 = time.perf_counter()
    ex_n = ex_d = None
    if normals:
        ex_n = run(list(normals), "features: new normal", False)
        added["normal"] = _add_record(sorted(ex_n.samples, key=lambda s: given[s.path]))
    if defects:
        ex_d = run(list(defects), "features: new defects", True)
        added["defect"] = _add_record(sorted(ex_d.samples, key=lambda s: given[s.path]))
    seconds["extract"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    roi_patches = None if parent.roi is None else patch_roi(parent.roi, pm.features.grid)  # the parent's ROI
    defect_sources = parent.sources
    if ex_n is not None and ex_n.features.shape[0]:
        rows = ex_n.features if roi_patches is None else ex_n.features[:, roi_patches]
        negative, neg_stats = extend_bank(negative, rows.reshape(-1, d), neg_stats, k)
    if ex_d is not None and ex_d.features.shape[0]:
        covers = ex_d.covers if roi_patches is None else ex_d.covers * roi_patches[None]
        sel = defect_patches(covers, min_cover)
        vec = ex_d.features[sel]
        if vec.shape[0]:
            before = 0 if positive is None else positive.size
            positive, pos_stats = extend_bank(
                positive, vec, pos_stats if positive else BankStats(0, 0), k, defaults.POS_RATIO
            )
            defect_sources = _grown_sources(defect_sources, before, positive, vec, np.nonzero(sel)[0], ex_d.samples)
    seconds["banks"] = time.perf_counter() - t2
    if not added["normal"] and not added["defect"]:
        raise ValueError("none of the new images could be read: " + "; ".join(e for _, e in errors[:5]))

    sources = (
        pm.sources
        if pm.sources is None
        else replace(
            pm.sources,
            normal_images=pm.sources.normal_images + len(added["normal"]),
            defect_images=pm.sources.defect_images + len(added["defect"]),
        )
    )
    manifest = replace(
        pm, coreset=replace(pm.coreset, negative=neg_stats, positive=pos_stats), sources=sources, index=None
    )  # an index belongs to the parent's vectors
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    thr = pm.threshold
    t3 = time.perf_counter()
    if calibration:
        ex = run(list(calibration), "features: calibration", True)
        labels = np.array([s.label for s in ex.samples])
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            scorer = Scorer(BankPair(negative, positive, manifest, parent.roi, defect_sources))
        scores = score_samples(scorer, ex.features)
        values: Dict[str, float] = {}
        detail: Dict[str, Dict[str, Any]] = {}
        for m in MODES:
            t = threshold(scores[m], labels, thr.rule, thr.target_fpr)
            values[m], detail[m] = t["value"], t
        thr = Thresholds(thr.rule, thr.target_fpr, values, detail, {"images": len(ex.samples), "at": now})
        threshold_note = (
            f"recalibrated on {len(ex.samples)} held-out images (not on the cross-fitted defects a build uses)"
        )
    else:
        threshold_note = "kept from the parent"
    seconds["calibrate"] = time.perf_counter() - t3
    record = UpdateRecord(
        at=now,
        parent=Parent(os.path.abspath(parent_dir), sha256_file(os.path.join(parent_dir, MANIFEST))),
        added=Added(tuple(added["normal"]), tuple(added["defect"])),
        negative=SizeChange(parent.negative.size, negative.size),
        positive=SizeChange(parent.positive.size if parent.positive else 0, positive.size if positive else 0),
        threshold=threshold_note,
        errors=tuple(FileError(*e) for e in errors),
        note=note,
        tool=f"exdd {__version__}",
    )
    manifest = replace(
        manifest, threshold=thr, parent=record.parent, updates=manifest.updates + (record,), created=now, files={}
    )
    t4 = time.perf_counter()
    projection = load_projection(parent_dir, pm)  # the parent's, read before the swap
    roi_png = None
    if parent.roi is not None and os.path.isfile(os.path.join(parent_dir, ROI_PNG)):
        with open(os.path.join(parent_dir, ROI_PNG), "rb") as f:
            roi_png = f.read()
    with staged_dir(out_dir, bank_file, "banks") as tmp:  # written beside, fsync'd, swapped in whole
        manifest = save_bank(tmp, negative, positive, manifest, projection, parent.roi, roi_png, defect_sources)
    seconds["save"] = time.perf_counter() - t4
    seconds["total"] = time.perf_counter() - t0
    return UpdateResult(manifest, errors, {k_: round(v, 3) for k_, v in seconds.items()})


# ---- inputs: image paths, folders and operator verdicts ------------------------------------------------------


def _mask_beside(path: str) -> Optional[str]:
    stem, ext = os.path.splitext(path)
    for cand in (f"{stem}_GT{ext}", f"{stem}_GT.png", f"{stem}_mask.png"):
        if os.path.isfile(cand):
            return cand
    return None


def _expand(path: str) -> List[str]:
    """A file, or every image below a folder (masks *_GT / *_mask excluded), sorted."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise DatasetError(f"{path}: no such image file or folder")
    out = []
    for d, dirs, files in os.walk(path):
        dirs.sort()
        for f in sorted(files):
            stem = os.path.splitext(f)[0]
            if is_image_name(f) and not f.startswith(".") and not stem.endswith(("_GT", "_mask")):
                out.append(os.path.join(d, f))
    return out


def normal_samples(paths: Sequence[str]) -> List[Sample]:
    """Normal samples of image files / folders."""
    return [Sample(p, None, 0, "update", "normal") for src in paths for p in _expand(src)]


def defect_samples(paths: Sequence[str]) -> Tuple[List[Sample], List[Tuple[str, str]]]:
    """Defect samples of image files / folders (mask NNNNN_GT.png or NNNNN_mask.png beside each); errors for the
    rest."""
    out, errors = [], []
    for src in paths:
        for p in _expand(src):
            m = _mask_beside(p)
            if m is None:
                stem = os.path.basename(os.path.splitext(p)[0])
                errors.append((p, f"{p}: defect image without a mask ({stem}_GT.png beside it): skipped"))
            else:
                out.append(Sample(p, m, 1, "update", "defect"))
    return out, errors


# Rows written since issue 27 carry the model's verdict in column 'verdict' (and 'nearest_source', which rows of
# earlier exdd never have): those rows' 'verdict' is never read as the operator's.
MODEL_VERDICT, MODEL_ROW_MARK = "verdict", "nearest_source"


def verdict_samples(
    results_path: str, column: str = "verdict"
) -> Tuple[List[Sample], List[Sample], List[Tuple[str, str]]]:
    """(normals, defects, errors) from a result file (JSONL/CSV) with an operator-verdict column.

    Rows without a verdict are not reviewed and skipped; a defect verdict needs a mask: column
    ``mask`` or NNNNN_GT.png beside the image. Unknown verdicts and missing files are errors.
    """
    from exdd.result_rows import read_rows

    try:
        rows = read_rows(results_path)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{results_path}: unreadable result file ({e})") from None
    if rows and not any(column in r for r in rows):
        raise DatasetError(f"{results_path}: no column {column!r} (operator verdicts); columns: {sorted(rows[0])}")
    if column == MODEL_VERDICT and any(MODEL_ROW_MARK in r for r in rows):
        raise DatasetError(
            f"{results_path}: column {column!r} holds the model's own verdict (ok / review / defect, "
            "issue 27), not the operator's: write the operator's decision in a column of its own, "
            "e.g. operator_verdict, and pass --verdict-column operator_verdict"
        )
    normals, defects, errors = [], [], []
    base = os.path.dirname(os.path.abspath(results_path))
    for i, r in enumerate(rows, 1):
        v = r.get(column)
        if v is None or str(v).strip() == "":
            continue
        v = str(v).strip().lower()
        path = str(r.get("path") or "")
        path = path if os.path.isabs(path) else os.path.join(base, path)
        where = f"{results_path} row {i}"
        if not os.path.isfile(path):
            errors.append((path, f"{where}: image {path} not found"))
        elif v in NORMAL_VERDICTS:
            normals.append(Sample(path, None, 0, "update", "normal"))
        elif v in DEFECT_VERDICTS:
            mask = r.get("mask") or _mask_beside(path)
            if mask and not os.path.isabs(mask):
                mask = os.path.join(base, mask)
            if not mask or not os.path.isfile(mask):
                errors.append(
                    (
                        path,
                        f"{where}: defect verdict for {path} without a mask (column 'mask' or "
                        "NNNNN_GT.png beside it): skipped",
                    )
                )
            else:
                defects.append(Sample(path, mask, 1, "update", "defect"))
        else:
            errors.append(
                (
                    path,
                    f"{where}: verdict {v!r} is neither normal ({', '.join(NORMAL_VERDICTS[:5])}, ...) "
                    f"nor defect ({', '.join(DEFECT_VERDICTS[:4])}, ...)",
                )
            )
    return normals, defects, errors


def already_added(manifest: OfflineManifest) -> set:
    """Absolute paths of images added by earlier updates in this lineage."""
    return manifest.already_added()


def heldout_samples(dataset: str, manifest: OfflineManifest, holdout: float, layout: str = "auto") -> List[Sample]:
    """The held-out training images the parent build calibrated on (same seed and hold-out rule), checked against its
    counts. Banks built before issue 25 (no sources.heldout_rule) held out by the seeded listing-order rule."""
    from exdd.datasets import HOLDOUT_RULE, holdout_split, legacy_holdout_split, load_split

    seed = 0 if manifest.coreset is None else manifest.coreset.seed
    rule = None if manifest.sources is None else manifest.sources.heldout_rule
    if rule not in (None, HOLDOUT_RULE):
        raise DatasetError(f"{dataset}: the banks held out images by rule {rule!r}, which this exdd does not know")
    split = holdout_split if rule == HOLDOUT_RULE else legacy_holdout_split
    _, held = split(load_split(dataset, "train", layout), holdout, seed)
    src = manifest.sources
    want = (None, None) if src is None else (src.heldout_normal, src.heldout_defect)
    got = (sum(1 for s in held if s.label == 0), sum(1 for s in held if s.label == 1))
    if None not in want and tuple(want) != got:
        raise DatasetError(
            f"{dataset}: --holdout {holdout} gives {got[0]} normal + {got[1]} defective held-out "
            f"images, "
            f"the banks were calibrated on {want[0]} + {want[1]}: not the same split"
        )
    return held
