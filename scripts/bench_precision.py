"""int8 vs fp32 extractor on real dev sets: speed, feature parity, image-score rank correlation, image/pixel AUROC.

For each dataset: export fp32 ONNX (once, shared), quantize to int8 calibrated on the dataset's normal
training images, build banks from fp32 features of a subset of the training images (what `offline build`
does, fp32), then score a test subset with fp32 and with int8 features against the SAME banks.

    nice -n 10 .venv/bin/python scripts/bench_int8.py --datasets ../shared/data/magnetic_tile,../shared/data/ksdd1_dev \
        --weights ../shared/weights/wrn50-random0-bncal.safetensors --train 40 --test 80 --out runs/i11/int8.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def _ort(path: str, threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def featurize(sess, samples, hw, grid, with_mask, batch=4):
    """(features, covers or None, masks or None) of samples through an ORT session."""
    from exdd.offline.extract import batches, cell_cover
    feats, covers, masks = [], [], []
    errors = []
    for bs, imgs, ms in batches(samples, hw, batch, with_mask, errors):
        feats.append(sess.run(["FEATURES"], {"IMAGE": imgs})[0])
        if with_mask:
            covers += [cell_cover(m, grid) for m in ms]
            masks += list(ms)
    f = np.concatenate(feats)
    return f, (np.stack(covers) if with_mask else None), (np.stack(masks) if with_mask else None)


def speed(sess, hw, batch, reps):
    x = np.random.default_rng(0).integers(0, 255, (batch, hw[0], hw[1], 3), dtype=np.uint8)
    sess.run(None, {"IMAGE": x})
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        sess.run(None, {"IMAGE": x})
        ts.append(time.perf_counter() - t)
    return 1000 * float(np.median(ts)) / batch


def pick(samples, n, seed=0):
    """n samples, half defective when possible, deterministic."""
    rng = np.random.default_rng(seed)
    pos = [s for s in samples if s.label == 1]
    neg = [s for s in samples if s.label == 0]
    rng.shuffle(pos)
    rng.shuffle(neg)
    npos = min(len(pos), n // 2)
    return sorted(pos[:npos] + neg[:n - npos], key=lambda s: s.path)


def run_dataset(ds, fp32_path, features, args, log):
    from exdd.export.quantize import calibration_images, quantize_int8, spearman, cosine_rows
    from exdd.offline.build import defect_patches, make_bank
    from exdd.datasets import load_split
    from exdd.metrics import auroc
    from exdd.scoring import BankPair, Scorer

    hw, grid, d = tuple(features["input_size"]), tuple(features["grid"]), int(features["d"])
    name = os.path.basename(os.path.normpath(ds))
    int8_path = os.path.join(args.workdir, f"{name}-int8.onnx")
    t0 = time.time()
    calib, _ = calibration_images(ds, args.calibration, hw)
    quantize_int8(fp32_path, int8_path, calib)
    t_quant = time.time() - t0
    log(f"{name}: quantized in {t_quant:.0f}s")
    s32, s8 = _ort(fp32_path, args.threads), _ort(int8_path, args.threads)
    train = load_split(ds, "train")
    normals = [s for s in train if s.label == 0][: args.train]
    defects = [s for s in train if s.label == 1][: max(4, args.train // 4)]
    fn, _, _ = featurize(s32, normals, hw, grid, False)
    fd, cov, _ = featurize(s32, defects, hw, grid, True)
    neg, _ = make_bank(fn.reshape(-1, d), 0.01, 1000, 3, 0, 24_000, 2.0)
    pos, _ = make_bank(fd[defect_patches(cov, 0.3)], 0.1, 1000, 3, 1, 24_000, 2.0)
    scorer = Scorer(BankPair(neg, pos, {"features": features, "k": 3, "default_mode": "exdd"}))
    log(f"{name}: banks {neg.size} + {pos.size} from {len(normals)} normal + {len(defects)} defective fp32 images")
    test = pick(load_split(ds, "test"), args.test)
    labels = np.array([s.label for s in test])
    out = {"dataset": ds, "train_normal": len(normals), "train_defect": len(defects), "test": len(test),
           "test_defective": int(labels.sum()), "banks": [neg.size, pos.size], "quantize_s": round(t_quant, 1),
           "calibration_images": len(calib)}
    res = {}
    for prec, sess in (("fp32", s32), ("int8", s8)):
        f, _, masks = featurize(sess, test, hw, grid, True)
        sc, maps = {m: [] for m in ("patchcore", "exdd")}, {m: [] for m in ("patchcore", "exdd")}
        for i in range(0, len(f), 4):
            r = scorer.score(f[i:i + 4], map_modes=("patchcore", "exdd"))
            for m in sc:
                sc[m].append(r["scores"][m])
                maps[m].append(r["maps"][m].astype(np.float32))
        res[prec] = {"features": f, "masks": masks, "scores": {m: np.concatenate(v) for m, v in sc.items()},
                     "maps": {m: np.concatenate(v) for m, v in maps.items()}}
    masks = res["fp32"]["masks"].astype(bool)
    cos = cosine_rows(res["int8"]["features"].reshape(-1, d).astype(np.float64),
                      res["fp32"]["features"].reshape(-1, d).astype(np.float64))
    out["patch_cosine_mean"] = float(cos.mean())
    out["patch_cosine_p01"] = float(np.quantile(cos, 0.01))
    for m in ("patchcore", "exdd"):
        a, b = res["fp32"]["scores"][m], res["int8"]["scores"][m]
        ent = {"rank_correlation": spearman(b, a),
               "image_auroc_fp32": auroc(a, labels), "image_auroc_int8": auroc(b, labels)}
        if masks.any():
            ent["pixel_auroc_fp32"] = auroc(res["fp32"]["maps"][m].ravel(), masks.ravel())
            ent["pixel_auroc_int8"] = auroc(res["int8"]["maps"][m].ravel(), masks.ravel())
        out[m] = {k: round(float(v), 4) for k, v in ent.items()}
        log(f"{name} {m}: {out[m]}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--train", type=int, default=40, help="normal training images for the bank (defective: a quarter)")
    ap.add_argument("--test", type=int, default=80, help="test images (half defective when possible)")
    ap.add_argument("--calibration", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed-reps", type=int, default=3)
    ap.add_argument("--workdir", default="runs/i11")
    ap.add_argument("--fp32-onnx", default=None, help="an fp32 export of the same weights to reuse")
    ap.add_argument("--out", default="runs/i11/int8.json")
    args = ap.parse_args()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    os.makedirs(args.workdir, exist_ok=True)
    import torch
    from exdd.export.onnx_export import export_onnx
    from exdd.offline.features import build_extractor
    torch.set_num_threads(args.threads)
    model, info = build_extractor(args.weights, 256, 0, (632, 224))
    fp32_path = args.fp32_onnx or export_onnx(model, info, os.path.join(args.workdir, "bench-fp32.onnx"), "fp32")
    del model
    report = {"machine": "2 vCPU Xeon 2.5 GHz (AVX-512 VNNI/BF16), shared with other jobs", "threads": args.threads,
              "weights": args.weights, "datasets": []}
    for ds in args.datasets.split(","):
        report["datasets"].append(run_dataset(ds, fp32_path, info, args, log))
    int8_path = os.path.join(args.workdir, f"{os.path.basename(os.path.normpath(args.datasets.split(',')[0]))}-int8.onnx")
    sp = {}
    for prec, path in (("fp32", fp32_path), ("int8", int8_path)):
        sess = _ort(path, args.threads)
        for b in (1, 8):
            sp[f"{prec}_batch{b}_ms_per_image"] = round(speed(sess, (632, 224), b, args.speed_reps), 1)
    sp["speedup_batch1"] = round(sp["fp32_batch1_ms_per_image"] / sp["int8_batch1_ms_per_image"], 2)
    sp["speedup_batch8"] = round(sp["fp32_batch8_ms_per_image"] / sp["int8_batch8_ms_per_image"], 2)
    report["speed"] = sp
    log(f"speed: {sp}")
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
