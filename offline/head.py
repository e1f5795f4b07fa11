"""The image head's build-time part (issue 25): cross-fitted evidence of the defective training images, and the
cross-validated fit of the logistic model the `head` mode serves (exdd_scoring/scores.py, HEAD_FEATURES).

Training images of the head: the held-out images (normal and defective, not in any bank) and the real defective
training images. Those are the leak: their defect patches ARE the positive bank, so scored against it their own
defect patches have a+ ~ 0 and every statistic says "known defect". So they are cross-fitted: split into
``HEAD_FOLDS`` folds, each fold scored against a positive bank built (as the build builds it) without that fold's
patches; synthetic defects stay in every fold's bank. They are not in the negative bank, so its evidence is fair.

The same cross-fitted pass gives every mode's score of those images, which the build's F1 threshold is calibrated
on beside the held-out images (offline/calibrate.py, ``crossfit_threshold``; issue 25, rule 7).

With fewer than ``HEAD_MIN_DEFECTIVE`` defective images (held-out + cross-fitted) or ``HEAD_MIN_NORMAL`` normal ones
the head is not fitted and serves its fixed fallback (scores.HEAD_FALLBACK: log of dual_topk's score), and the
manifest says so: a 7-weight model fitted on fewer than 10 defects follows their noise, and its cross-validated
AUROC over so few cannot tell it from the fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Union

import numpy as np

from exdd.metrics import auroc
from exdd_scoring import BankPair, Scorer
from exdd_scoring.bank import Bank
from exdd_scoring.fusion import fit_fusion, fusion_score
from exdd_scoring.manifest import BankManifest
from exdd_scoring.scores import HEAD_FALLBACK, HEAD_FEATURES, head_inputs

HEAD_FOLDS = 5  # cross-fit folds of the defective training images, and cross-validation folds of the fit
HEAD_MIN_DEFECTIVE = 10  # defective images (held-out + cross-fitted) below which the fixed fallback serves
HEAD_MIN_NORMAL = 5  # held-out normal images below which the fixed fallback serves
HEAD_L2 = 1.0


def crossfit_folds(n: int, seed: int, folds: int = HEAD_FOLDS) -> np.ndarray:
    """(n,) fold of each defective training image: a seeded permutation dealt into min(folds, n) folds."""
    k = max(1, min(folds, n))
    out = np.empty(n, np.int64)
    out[np.random.default_rng(seed).permutation(n)] = np.arange(n) % k
    return out


@dataclass
class Crossfit:
    """The cross-fitted defective training images: head statistics (n, len(HEAD_FEATURES)), every mode's image
    score ({mode: (n,)}), and which images a fold bank scored (a fold whose bank would have < 2 rows is not)."""

    inputs: np.ndarray
    scores: Dict[str, np.ndarray]
    scored: np.ndarray

    def rows(self) -> "Crossfit":
        """Only the scored images."""
        k = self.scored
        return Crossfit(self.inputs[k], {m: v[k] for m, v in self.scores.items()}, k[k])


def crossfit_evidence(
    negative: Bank,
    manifest: BankManifest,
    defect_feats: np.ndarray,
    defect_sel: np.ndarray,
    other_pos: Optional[np.ndarray],
    positive_of: Callable[[np.ndarray], Bank],
    seed: int,
    folds: int = HEAD_FOLDS,
    roi: Any = None,
    batch: int = 16,
) -> Crossfit:
    """Each real defective training image (n, h, w, d) scored against a positive bank built by positive_of((N, d)
    rows) from the other folds' defect patches (defect_sel (n, h, w)) and other_pos (synthetic), with the manifest's
    scoring and the line's ROI (BankPair.roi, as the held-out images are scored): head statistics and mode scores."""
    n = defect_feats.shape[0]
    out = Crossfit(np.zeros((n, len(HEAD_FEATURES)), np.float32), {}, np.zeros(n, bool))
    if n < 2:  # one image cannot be scored without itself: no cross-fitted evidence
        return out.rows()
    fold = crossfit_folds(n, seed, folds)
    d = defect_feats.shape[-1]
    for f in range(int(fold.max()) + 1):
        rest = fold != f
        rows = [defect_feats[rest][defect_sel[rest]].reshape(-1, d)]
        if other_pos is not None and other_pos.shape[0]:
            rows.append(other_pos.reshape(-1, d))
        vectors = np.concatenate(rows)
        if vectors.shape[0] < 2:
            continue
        scorer = Scorer(BankPair(negative, positive_of(vectors), manifest, roi))
        idx = np.flatnonzero(fold == f)
        for i in range(0, idx.size, batch):
            at = idx[i : i + batch]
            r = scorer.score(defect_feats[at].astype(np.float32), map_modes=())
            out.inputs[at] = np.asarray(head_inputs(r.evidence))
            for m, v in r.scores.items():
                out.scores.setdefault(m, np.zeros(n))[at] = np.asarray(v)
        out.scored[idx] = True
    return out


def fit_head(
    x: np.ndarray,
    labels: Union[Sequence[int], np.ndarray],
    seed: int = 0,
    folds: int = HEAD_FOLDS,
    l2: float = HEAD_L2,
    crossfit: int = 0,
) -> Dict[str, Any]:
    """The head's parameters (for manifest.Fusion): a logistic model of x (n, len(HEAD_FEATURES)) fitted on every
    image, with the AUROC of its out-of-fold predictions (stratified, seeded folds) and of the fallback's feature;
    HEAD_FALLBACK (with a note saying why) when there are too few images of a class."""
    y = np.asarray(labels).astype(int)
    x = np.asarray(x, np.float64)
    n_def, n_norm = int((y == 1).sum()), int((y == 0).sum())
    counts = {"normal": n_norm, "defective": n_def}
    if n_def < HEAD_MIN_DEFECTIVE or n_norm < HEAD_MIN_NORMAL:
        return dict(
            HEAD_FALLBACK,
            heldout=counts,
            crossfit=int(crossfit),
            note=f"{HEAD_FALLBACK['note']}: {n_def} defective / {n_norm} normal images to fit on, fewer than "
            f"{HEAD_MIN_DEFECTIVE} / {HEAD_MIN_NORMAL}",
        )
    params = fit_fusion(x, y, l2, features=HEAD_FEATURES, min_per_class=1)
    rng = np.random.default_rng(seed)
    fold = np.empty(y.size, np.int64)
    for lab in (0, 1):  # stratified: each fold holds both classes when it can
        idx = np.flatnonzero(y == lab)
        fold[idx[rng.permutation(idx.size)]] = np.arange(idx.size) % folds
    oof = np.zeros(y.size)
    for f in range(folds):
        test = fold == f
        if not test.any():
            continue
        p = fit_fusion(x[~test], y[~test], l2, features=HEAD_FEATURES, min_per_class=1)
        oof[test] = np.asarray(fusion_score(x[test], p, np))
    fb = x[:, HEAD_FEATURES.index(HEAD_FALLBACK["features"][0])]
    params.update(
        heldout=counts,
        cv_auroc=float(auroc(oof, y)),
        fallback_cv_auroc=float(auroc(fb, y)),
        folds=int(folds),
        crossfit=int(crossfit),
    )
    params.pop("note", None)
    return params
