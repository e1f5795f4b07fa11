"""Raw-feature caches (1536 channels, float16) of every dev set's train and test images, extracted once.

The decision study (scripts/studies/study_splits.py) regroups train + test by item / spot into repeated splits, so it
needs every image's features; this writes them with offline/feature_cache.py, one dataset after another
(a finished cache is reused as is).

  nice -n 10 .venv/bin/python -m scripts.studies.study_cache ksdd1_dev:632x224 bsdata_pitting:320x784
  nice -n 10 .venv/bin/python -m scripts.studies.study_cache magnetic_tile:320x224 --max-normals magnetic_tile=300,130
Sets are folders of ../shared/data, or of the folder EXDD_STUDY_DATA names (scripts.common.STUDY_DATA).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List

import numpy as np

from exdd.datasets import Sample, load_split
from exdd.offline.feature_cache import extract_raw
from scripts.common import STUDY_DATA, cache_folder

WEIGHTS = "/work/shared/weights/wrn50-random0-bncal.safetensors"


def normals_subset(samples: List[Sample], n: int, seed: int) -> List[Sample]:
    """Every defective sample and a seeded subset of n normals (extraction time is the budget on 2 cores)."""
    normals = [s for s in samples if s.label == 0]
    keep = {normals[i].path for i in np.random.default_rng(seed).permutation(len(normals))[:n]}
    return [s for s in samples if s.label == 1 or s.path in keep]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sets", nargs="+", help="NAME:HxW")
    ap.add_argument("--cache", default="runs/cache")
    ap.add_argument("--weights", default=WEIGHTS)
    ap.add_argument(
        "--max-normals", default=None, help="NAME=N,M: a seeded subset of N train / M test normals of a set"
    )
    a = ap.parse_args()
    limits = {}
    for item in (a.max_normals or "").split(";"):
        if item:
            k, v = item.split("=")
            limits[k] = dict(zip(("train", "test"), (int(x) for x in v.split(","))))
    for item in a.sets:
        name, size = item.split(":")
        hw = tuple(int(v) for v in size.split("x"))
        for split in ("train", "test"):
            t0 = time.time()
            samples = load_split(os.path.join(STUDY_DATA, name), split)
            if name in limits:
                samples = normals_subset(samples, limits[name][split], seed=0)
            done = [0]

            def progress(n: int) -> None:
                done[0] += n
                if done[0] % 80 < n:
                    print(
                        f"{name} {split}: {done[0]}/{len(samples)} {time.time() - t0:.0f}s", file=sys.stderr, flush=True
                    )

            extract_raw(samples, a.weights, hw, cache_folder(a.cache, name, hw, split), progress=progress)
            print(f"{name} {split}: {len(samples)} images in {time.time() - t0:.0f}s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
