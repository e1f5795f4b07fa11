"""Defaults shared by the CLI, the feature extractor and the bank builder, defined once (the paper's KSDD2 setup)."""

from __future__ import annotations

INPUT_HW = (632, 224)  # model input H x W: a 79 x 28 patch grid
INPUT_SIZE = f"{INPUT_HW[0]}x{INPUT_HW[1]}"
D = 256  # projection dimension 1536 -> d
PROJECTION = "random"  # the build's projection kind (offline/projection.py's registry: random | pca)
PROJECTION_IMAGES = 200  # a fitted projection reads at most this many normal training images (evenly spaced)
NEG_RATIO = 0.01  # coreset ratio of the negative (normal) bank
POS_RATIO = 0.10  # coreset ratio of the positive (defect) bank
MIN_BANK = 1000  # a bank keeps at least this many patches (capped at N)
K = 3  # neighbourhood size of the reweighting
TARGET_FPR = 0.01  # --threshold-rule fpr
MIN_COVER = 0.3  # a defect patch: its cell covered by the mask at least this much
HOLDOUT = 0.1  # fraction of the training images kept out for calibration
CHUNK_ROWS = 24_000  # patch rows per chunk of the chunked greedy coreset (bounds its memory)
BATCH_SIZE = 8  # images per batch of the offline feature extraction (build, evaluate, caches)
OVERSAMPLE = 2.0  # the chunked greedy's per-chunk oversampling of the final bank size
# The promise on served results: the score of an image agrees within this relative tolerance whatever else is
# in its dynamic batch, which server answers and which CPU runs it (batched kernels round differently); its map
# within this fraction of the map's peak. Far below any decision margin; tests assert exactly this.
SCORE_RTOL = 1e-4
