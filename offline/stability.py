"""Build stability (issue 25): a second build of the same data with the next seed, and how the two rank images.

The coreset has no seed and the images are stacked in content order, so the seed moves one thing only: which
training images are held out to calibrate (``exdd.datasets.holdout_split``), a real perturbation of the data the
banks hold. ``exdd offline evaluate --stability`` rebuilds BANKS with seed + 1 from the manifest's settings and
reports the Spearman correlation of the test images' scores of the two builds, per mode.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from exdd import defaults
from exdd.datasets import HOLDOUT_RULE, DatasetError, Sample, holdout_split, legacy_holdout_split, load_split, synthetic
from exdd.metrics import spearman
from exdd_scoring import BankError
from exdd_scoring.provenance import OfflineManifest

from .build import BuildConfig


@dataclass
class Rebuild:
    """What the second build needs beside the model: its settings, data and the first build's held-out images."""

    cfg: BuildConfig
    synthetic_dirs: Sequence[str]
    synthetic_limit: Optional[int]
    held_first: List[Sample]


def rebuild_plan(manifest: OfflineManifest, where: str, dataset: str, layout: str, batch_size: int) -> Rebuild:
    """The BuildConfig that built the manifest's banks, with the next seed; refused when the manifest lacks what a
    rebuild needs or DATASET is not the data the banks were built from (image counts)."""
    cs, src = manifest.coreset, manifest.sources
    if cs is None or src is None:
        raise BankError(
            f"{where}: no coreset or sources section (banks built before exdd recorded them): "
            f"cannot rebuild them for --stability"
        )
    fraction = defaults.HOLDOUT if src.heldout_fraction is None else src.heldout_fraction
    rule = src.heldout_rule
    if rule not in (None, HOLDOUT_RULE):
        raise BankError(f"{where}: hold-out rule {rule!r} unknown to this exdd")
    train = load_split(dataset, "train", layout)
    kept, held = (holdout_split if rule == HOLDOUT_RULE else legacy_holdout_split)(train, fraction, cs.seed)

    def counts(kept, held):
        return (
            sum(s.label == 0 for s in kept),
            sum(s.label == 1 for s in kept),
            sum(s.label == 0 for s in held),
            sum(s.label == 1 for s in held),
        )

    want = (src.normal_images, src.defect_images, src.heldout_normal, src.heldout_defect)
    if manifest.updates:
        want = (
            want[0] - sum(len(u.added.normal) for u in manifest.updates),
            want[1] - sum(len(u.added.defect) for u in manifest.updates),
        ) + want[2:]
    got = counts(kept, held)
    if got != want:
        raise DatasetError(
            f"{dataset}: its training split gives {got[0]} normal + {got[1]} defective bank images and "
            f"{got[2]} + {got[3]} held out with seed {cs.seed}; the banks were built from {want[0]} + "
            f"{want[1]} and {want[2]} + {want[3]}: not the data the banks were built from"
        )
    synth_total = sum(len(synthetic(d)) for d in src.synthetic_dirs)
    thr, neg, pos = manifest.threshold, cs.negative, cs.positive
    cfg = BuildConfig(
        neg_ratio=defaults.NEG_RATIO if neg.ratio is None else neg.ratio,
        pos_ratio=defaults.POS_RATIO if pos.ratio is None else pos.ratio,
        min_size=defaults.MIN_BANK if neg.min_size is None else neg.min_size,
        k=manifest.k,
        min_cover=defaults.MIN_COVER if manifest.defect_patch_rule is None else manifest.defect_patch_rule.min_cover,
        holdout=fraction,
        seed=cs.seed + 1,
        threshold_rule=thr.rule if thr is not None and thr.rule else "f1",
        target_fpr=thr.target_fpr if thr is not None and thr.target_fpr is not None else defaults.TARGET_FPR,
        default_mode=manifest.default_mode,
        gamma=manifest.scoring.gamma,
        topk=manifest.scoring.topk,
        chunk_rows=cs.chunk_rows or defaults.CHUNK_ROWS,
        oversample=cs.oversample or defaults.OVERSAMPLE,
        batch_size=batch_size,
    )
    return Rebuild(cfg, src.synthetic_dirs, src.synthetic_images if src.synthetic_images < synth_total else None, held)


def verdict_agreement(
    scores_a: Dict[str, np.ndarray],
    scores_b: Dict[str, np.ndarray],
    thresholds_a: Dict[str, float],
    thresholds_b: Dict[str, float],
    names: Sequence[str],
) -> Dict[str, Dict[str, Any]]:
    """Per mode both builds calibrated: how many images get the same IS_DEFECT (score >= that build's own
    threshold) from both builds, and the images whose decision flips (names, in order), with the two thresholds."""
    out: Dict[str, Dict[str, Any]] = {}
    for m in scores_a:
        if m not in scores_b or m not in thresholds_a or m not in thresholds_b:
            continue
        da = np.asarray(scores_a[m]) >= thresholds_a[m]
        db = np.asarray(scores_b[m]) >= thresholds_b[m]
        flips = np.flatnonzero(da != db)
        out[m] = {
            "same": int(da.size - flips.size),
            "images": int(da.size),
            "thresholds": [float(thresholds_a[m]), float(thresholds_b[m])],
            "flips": [names[int(i)] for i in flips],
        }
    return out


def stability_report(
    scores_a: Dict[str, np.ndarray],
    scores_b: Dict[str, np.ndarray],
    seeds: Sequence[int],
    held_a: Sequence[Sample],
    held_b: Sequence[Sample],
    dataset: str,
    banks_a: OfflineManifest,
    banks_b: OfflineManifest,
    scored: Sequence[Sample] = (),
) -> Dict[str, Any]:
    """Spearman of the two builds' image scores per mode, how many images they decide alike (verdict_agreement;
    scored: the test images in the scores' order, thresholds from each build's manifest), and what differs between
    the builds."""
    rel = lambda ss: sorted(os.path.relpath(s.path, dataset) for s in ss)  # noqa: E731
    ha, hb = rel(held_a), rel(held_b)
    size = lambda m, b: getattr(m.coreset, b).size  # noqa: E731
    names = [os.path.relpath(s.path, dataset) for s in scored]
    return {
        "seeds": list(seeds),
        "spearman": {m: spearman(scores_a[m], scores_b[m]) for m in scores_a if m in scores_b},
        "verdicts": verdict_agreement(scores_a, scores_b, banks_a.thresholds, banks_b.thresholds, names)
        if names
        else {},
        "images": int(len(next(iter(scores_a.values()))) if scores_a else 0),
        "held_out": {"first": ha, "second": hb, "common": len(set(ha) & set(hb))},
        "banks": {b: [size(banks_a, b), size(banks_b, b)] for b in ("negative", "positive")},
    }


def report_lines(rep: Dict[str, Any]) -> List[str]:
    """Plain lines for the terminal: one `stability[MODE]: rho` per mode, then what differs."""
    a, b = rep["seeds"]
    h = rep["held_out"]
    lines = [f"stability: Spearman of the {rep['images']} images' scores, banks (seed {a}) vs a rebuild with seed {b}"]
    lines += [f"stability[{m}]: {v:.4f}" for m, v in rep["spearman"].items()]
    for m, v in rep.get("verdicts", {}).items():
        lines.append(
            f"agreement[{m}]: {v['same']} of {v['images']} images get the same IS_DEFECT (score >= each build's "
            f"threshold: {v['thresholds'][0]:.4g} vs {v['thresholds'][1]:.4g})"
            + (f"; flip: {', '.join(v['flips'][:5])}" + (" ..." if len(v["flips"]) > 5 else "") if v["flips"] else "")
        )
    lines.append(
        f"stability: held out {len(h['first'])} (seed {a}) and {len(h['second'])} (seed {b}) training "
        f"images, {h['common']} in common"
    )
    lines.append("stability: bank sizes " + ", ".join(f"{k} {v[0]} vs {v[1]}" for k, v in rep["banks"].items()))
    return lines
