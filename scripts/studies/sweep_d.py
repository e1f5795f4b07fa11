"""Sweep of the projection dimension d (and the modes side by side) on a real dataset.

One raw-feature extraction (cached) serves every d: features = raw @ P_d, identical to the
exported extractor with d baked in. For each d: banks as `exdd offline build`, metrics as
`exdd offline evaluate`, wall times. Prints a markdown table; writes JSON.

  .venv/bin/python -m scripts.studies.sweep_d --dataset ../shared/data/magnetic_tile \
      --weights ../shared/weights/wrn50-random0-bncal.safetensors --ds 128,256,512,1536
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

from exdd.datasets import load_split
from exdd.offline.build import BuildConfig, build
from exdd.offline.evaluate import metrics_of, score_features
from exdd.offline.features import fingerprint, make_projection
from exdd_scoring import MODES, Scorer, load_banks
from scripts.common import peak_rss_gb, raw_caches
from scripts.harness import BenchResult, params_of


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--ds", default="128,256,512,1536")
    ap.add_argument("--input-size", default="632x224")
    ap.add_argument("--cache", default="runs/cache")
    ap.add_argument("--out", default="runs/sweep_d")
    ap.add_argument("--no-pixel", action="store_true")
    a = ap.parse_args()
    hw = tuple(int(v) for v in a.input_size.split("x"))
    t0 = time.time()
    caches = raw_caches(a.dataset, a.weights, hw, a.cache)
    t_extract = time.time() - t0
    print(f"raw features ready in {t_extract:.0f}s", file=sys.stderr)
    test = caches["test"]
    test_samples, order = test.rows_of(load_split(a.dataset, "test"))
    rows = []
    os.makedirs(a.out, exist_ok=True)
    for d in (int(v) for v in a.ds.split(",")):
        proj = make_projection(d, 0)
        info = fingerprint(caches["train"].weights_id, proj, 0, hw)
        bank_dir = os.path.join(a.out, f"banks-d{d}")
        t1 = time.time()
        res = build(a.dataset, bank_dir, None, info, BuildConfig(), featurize=caches["train"].featurizer(proj))
        t_build = time.time() - t1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            scorer = Scorer(load_banks(bank_dir, info))
        t2 = time.time()

        def batches(bs=8):
            for i in range(0, len(order), bs):
                r = order[i : i + bs]
                yield test_samples[i : i + bs], test.project(r, proj, np.float32), [test.masks[j] for j in r]

        scored = score_features(batches(), len(order), scorer, hw, not a.no_pixel)
        t_score = time.time() - t2
        met = metrics_of(scored)
        cs = res.manifest.coreset
        rows.append(
            {
                "d": d,
                "metrics": met,
                "build_s": round(t_build, 1),
                "score_s": round(t_score, 1),
                "ms_per_image_scoring": round(1000 * t_score / max(len(order), 1), 1),
                "negative_size": cs.negative.size,
                "positive_size": cs.positive.size,
                "thresholds": res.manifest.thresholds,
            }
        )
        print(
            f"d={d}: "
            + ", ".join(
                f"{m} {met[m]['image_auroc']:.4f}/{met[m].get('pixel_auroc', float('nan')):.4f}" for m in MODES
            ),
            file=sys.stderr,
            flush=True,
        )
        BenchResult(
            "sweep_d",
            params_of(a),
            {
                "dataset": a.dataset,
                "weights": caches["train"].weights_id,
                "rows": rows,
                "extract_s": round(t_extract, 1),
                "peak_rss_gb": peak_rss_gb(),
            },
        ).save(os.path.join(a.out, "sweep.json"))
    print(
        "| d | mode | image AUROC | image AP | image F1-max | pixel AUROC | pixel AUPRO | bank -/+ | build s "
        "| score ms/img |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for m in MODES:
            v = r["metrics"][m]
            print(
                f"| {r['d']} | {m} | {v['image_auroc']:.4f} | {v['image_ap']:.4f} | {v['image_f1_max']:.4f} | "
                f"{v.get('pixel_auroc', float('nan')):.4f} | {v.get('pixel_aupro', float('nan')):.4f} | "
                f"{r['negative_size']}/{r['positive_size']} | {r['build_s']} | {r['ms_per_image_scoring']} |"
            )


if __name__ == "__main__":
    main()
