"""The augmentation study (the paper's Table 2 protocol): banks and metrics vs synthetic samples.

For each count c, the positive bank takes the first c synthetic samples (in file order) besides
the real defects; the negative bank and the test split stay the same. Features are extracted
once per image and memoised, so a sweep costs one extraction plus a build per count.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from exdd.datasets import Sample, load_split
from exdd_scoring import MODES, Scorer, load_banks

from .build import BuildConfig, build, model_featurizer
from .evaluate import metrics_of, score_features
from .extract import Extracted


class MemoFeaturizer:
    """A featurizer that extracts each image once and serves it from memory afterwards."""

    def __init__(self, inner: Callable):
        self.inner = inner
        self.feats: Dict[str, np.ndarray] = {}
        self.covers: Dict[str, np.ndarray] = {}
        self.errors: Dict[str, str] = {}

    def __call__(self, samples: Sequence[Sample], with_mask: bool, progress) -> Extracted:
        missing = [s for s in samples if s.path not in self.feats and s.path not in self.errors]
        if missing:
            ex = self.inner(missing, True, progress)
            for i, s in enumerate(ex.samples):
                self.feats[s.path] = ex.features[i]
                self.covers[s.path] = ex.covers[i]
            self.errors.update(dict(ex.errors))
        elif progress:
            progress(len(samples))
        kept = [s for s in samples if s.path in self.feats]
        d = next(iter(self.feats.values())).shape if self.feats else (0, 0, 0)
        f = np.stack([self.feats[s.path] for s in kept]) if kept else np.zeros((0,) + d, np.float16)
        c = np.stack([self.covers[s.path] for s in kept]) if (kept and with_mask) else None
        errs = [(s.path, self.errors[s.path]) for s in samples if s.path in self.errors]
        return Extracted(f, c, kept, errs)


def cached_first(caches: Sequence[Any], proj: np.ndarray, fallback: Callable) -> Callable:
    """A featurizer serving images found in raw-feature caches (projected by proj), extracting the rest."""

    def featurize(samples, with_mask, progress):
        parts = []
        rest = list(samples)
        for c in caches:
            hit, _ = c.rows_of(rest)
            if hit:
                parts.append(c.featurizer(proj)(hit, with_mask, None))
                found = {id(s) for s in hit}
                rest = [s for s in rest if id(s) not in found]
        if rest:
            parts.append(fallback(rest, with_mask, None))
        if progress:
            progress(len(samples))
        if len(parts) == 1:
            return parts[0]
        return Extracted(
            np.concatenate([p.features for p in parts]),
            np.concatenate([p.covers for p in parts]) if with_mask else None,
            [s for p in parts for s in p.samples],
            [e for p in parts for e in p.errors],
        )

    return featurize


def cached_mask(caches: Sequence[Any], path: str) -> Optional[np.ndarray]:
    """An image's mask at the input size from the first raw-feature cache that holds the image, else None."""
    for c in caches:
        row = c.row_of(path)
        if row is not None:
            return np.asarray(c.masks[row])
    return None


def sweep(
    dataset: str,
    synthetic_dirs: Sequence[str],
    counts: Sequence[int],
    out_dir: str,
    model,
    features: Dict[str, Any],
    cfg: BuildConfig,
    with_pixel: bool = True,
    log: Callable[[str], None] = print,
    raw_caches: Sequence[Any] = (),
) -> Dict[str, Any]:
    """Build and evaluate banks for each count of synthetic samples; returns the rows.

    raw_caches: RawCache objects (offline/feature_cache.py) of the same weights and input size;
    images found there are not extracted again.
    """
    from .extract import read_sample
    from .features import make_projection

    inner = model_featurizer(model, features, cfg.batch_size)
    if raw_caches:
        proj = make_projection(int(features["d"]), int(features["projection_seed"]))
        inner = cached_first(raw_caches, proj, inner)
    memo = MemoFeaturizer(inner)
    size_hw = tuple(features["input_size"])
    test = load_split(dataset, "test")
    test_ex = memo(test, True, None)
    masks = {}
    for s in test_ex.samples:
        mask = cached_mask(raw_caches, s.path)
        masks[s.path] = mask if mask is not None else read_sample(s, size_hw, True)[1]
    rows: List[Dict[str, Any]] = []
    negative = None  # the negative bank does not depend on the synthetic count
    for c in counts:
        bank_dir = os.path.join(out_dir, f"banks-synth{c}")
        res = build(
            dataset,
            bank_dir,
            model,
            features,
            cfg,
            synthetic_dirs if c > 0 else (),
            featurize=memo,
            synthetic_limit=c,
            negative_bank=negative,
        )
        man = res.manifest
        assert man.coreset is not None and man.sources is not None  # a build records both
        if negative is None:
            pair = load_banks(bank_dir, features)
            negative = (pair.negative, man.coreset.negative)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            scorer = Scorer(load_banks(bank_dir, features))

        def feature_batches(bs: int = 8):
            for i in range(0, len(test_ex.samples), bs):
                ss = test_ex.samples[i : i + bs]
                yield ss, test_ex.features[i : i + bs].astype(np.float32), [masks[s.path] for s in ss]

        scored = score_features(feature_batches(), len(test_ex.samples), scorer, size_hw, with_pixel)
        met = metrics_of(scored)
        rows.append(
            {
                "synthetic": c,
                "synthetic_used": man.sources.synthetic_images,
                "positive_patches": man.coreset.positive.patches,
                "positive_size": man.coreset.positive.size,
                "metrics": met,
            }
        )
        log(
            f"synthetic {c}: "
            + ", ".join(
                f"{m} image {met[m]['image_auroc']:.4f} pixel {met[m].get('pixel_auroc', float('nan')):.4f}"
                for m in MODES
            )
        )
    return {"dataset": dataset, "synthetic_dirs": list(synthetic_dirs), "weights": features["weights"], "rows": rows}


def markdown(result: Dict[str, Any]) -> str:
    """The sweep as a markdown table."""
    out = [
        "| synthetic samples | positive bank | mode | image AUROC | image AP | pixel AUROC | pixel AUPRO |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        for m in MODES:
            v = r["metrics"][m]
            out.append(
                f"| {r['synthetic_used']} | {r['positive_size']} | {m} | {v['image_auroc']:.4f} | "
                f"{v['image_ap']:.4f} | {v.get('pixel_auroc', float('nan')):.4f} | "
                f"{v.get('pixel_aupro', float('nan')):.4f} |"
            )
    return "\n".join(out)


def plot(result: Dict[str, Any], path: str) -> str:
    """PNG of image and pixel AUROC against the number of synthetic samples, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["synthetic_used"] for r in result["rows"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in zip(axes, ("image_auroc", "pixel_auroc"), ("image AUROC", "pixel AUROC")):
        for m in MODES:
            ax.plot(xs, [r["metrics"][m].get(key, np.nan) for r in result["rows"]], marker="o", label=m)
        ax.set_xlabel("synthetic samples in the positive bank")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{os.path.basename(os.path.normpath(result['dataset']))} -- weights {result['weights']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save(result: Dict[str, Any], out_dir: str) -> Dict[str, str]:
    """Write sweep.json, sweep.md and sweep.png into out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "json": os.path.join(out_dir, "sweep.json"),
        "md": os.path.join(out_dir, "sweep.md"),
        "png": os.path.join(out_dir, "sweep.png"),
    }
    json.dump(result, open(paths["json"], "w"), indent=1)
    open(paths["md"], "w").write(markdown(result) + "\n")
    plot(result, paths["png"])
    return paths
