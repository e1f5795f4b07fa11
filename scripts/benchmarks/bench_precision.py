"""Faster CPU extractors vs fp32 on real dev sets: speed, feature parity, image-score rank correlation, AUROCs.

Variants (``--variants``): ``int8`` (ONNX Runtime static QDQ, calibrated on the dataset's normal training images)
and ``bf16`` (the fp32 ONNX run by OpenVINO with inference precision bf16). For each dataset: build banks from
fp32 (ONNX Runtime) features of a subset of the training images (what `offline build` does), then score a test
subset with fp32 and with each variant's features against the SAME banks.

    .venv/bin/python -m scripts.benchmarks.bench_precision \
        --datasets ../shared/data/magnetic_tile,../shared/data/ksdd1_dev \
        --weights ../shared/weights/wrn50-random0-bncal.safetensors --variants bf16,int8 --train 40 --test 80 \
        --out runs/i11/precision.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from scripts.harness import BenchResult, latency_stats, params_of


def runner(variant: str, fp32_path: str, int8_path: str, threads: int):
    """The extractor of a variant: fp32 / int8 through ONNX Runtime, bf16 through OpenVINO."""
    from exdd_scoring.runtimes import open_runtime

    if variant == "bf16":
        return open_runtime("openvino", fp32_path, "bf16", threads)
    return open_runtime("onnxruntime", int8_path if variant == "int8" else fp32_path, "", threads)


def featurize(sess, samples, hw, grid, with_mask, batch=4):
    """(features, covers or None, masks or None) of samples through a runner."""
    from exdd.offline.extract import batches, cell_cover

    feats, covers, masks = [], [], []
    errors = []
    for bs, imgs, ms in batches(samples, hw, batch, with_mask, errors):
        feats.append(sess.run(imgs))
        if with_mask:
            covers += [cell_cover(m, grid) for m in ms]
            masks += list(ms)
    f = np.concatenate(feats)
    return f, (np.stack(covers) if with_mask else None), (np.stack(masks) if with_mask else None)


def speed(sess, hw, batch, reps):
    x = np.random.default_rng(0).integers(0, 255, (batch, hw[0], hw[1], 3), dtype=np.uint8)
    sess.run(x)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        sess.run(x)
        ts.append(time.perf_counter() - t)
    return latency_stats(ts)["p50_ms"] / batch


def pick(samples, n, seed=0):
    """n samples, half defective when possible, deterministic."""
    rng = np.random.default_rng(seed)
    pos = [s for s in samples if s.label == 1]
    neg = [s for s in samples if s.label == 0]
    rng.shuffle(pos)
    rng.shuffle(neg)
    npos = min(len(pos), n // 2)
    return sorted(pos[:npos] + neg[: n - npos], key=lambda s: s.path)


MODES_MEASURED = ("patchcore", "exdd", "dual")


def run_dataset(ds, fp32_path, features, args, log):
    from exdd.datasets import load_split
    from exdd.export.quantize import calibration_images, cosine_rows, quantize_int8
    from exdd.metrics import auroc, spearman
    from exdd.offline.build import BuildConfig, defect_patches, make_bank
    from exdd_scoring import BankPair, Scorer

    hw, grid, d = tuple(features["input_size"]), tuple(features["grid"]), int(features["d"])
    name = os.path.basename(os.path.normpath(ds))
    variants = args.variants.split(",")
    int8_path = os.path.join(args.workdir, f"{name}-int8.onnx")
    out = {"dataset": ds}
    if "int8" in variants:
        t0 = time.time()
        calib, _ = calibration_images(ds, args.calibration, hw)
        quantize_int8(fp32_path, int8_path, calib)
        out["quantize_s"], out["calibration_images"] = round(time.time() - t0, 1), len(calib)
        log(f"{name}: quantized in {out['quantize_s']}s")
    s32 = runner("fp32", fp32_path, int8_path, args.threads)
    train = load_split(ds, "train")
    normals = [s for s in train if s.label == 0][: args.train]
    defects = [s for s in train if s.label == 1][: max(4, args.train // 4)]

    def scorer_from(extractor, prec):
        """Banks (what `offline build` does, 1 % / 10 % coresets) from the training subset's features of extractor."""
        fn, _, _ = featurize(extractor, normals, hw, grid, False)
        fd, cov, _ = featurize(extractor, defects, hw, grid, True)
        c = BuildConfig()
        neg, _ = make_bank(fn.reshape(-1, d), c.neg_ratio, c.min_size, c.k, c.chunk_rows, c.oversample)
        pos, _ = make_bank(
            fd[defect_patches(cov, c.min_cover)], c.pos_ratio, c.min_size, c.k, c.chunk_rows, c.oversample
        )
        log(
            f"{name}: banks {neg.size} + {pos.size} from {len(normals)} normal + {len(defects)} defective {prec} images"
        )
        manifest = {"features": features, "k": c.k, "default_mode": "dual"}
        return Scorer(BankPair(neg, pos, manifest)), [neg.size, pos.size]

    scorer, sizes = scorer_from(s32, "fp32")
    test = pick(load_split(ds, "test"), args.test)
    labels = np.array([s.label for s in test])
    out.update(
        {
            "train_normal": len(normals),
            "train_defect": len(defects),
            "test": len(test),
            "test_defective": int(labels.sum()),
            "banks": sizes,
        }
    )
    res = {}
    # a variant's test features against the fp32 banks, and (own_banks, what a deployment of that variant does:
    # `offline build --extractor`) against banks built from its own features
    runs = (
        [("fp32", "fp32", False)]
        + [(v, v, False) for v in variants]
        + ([(v + "+own_banks", v, True) for v in variants] if args.own_banks else [])
    )
    extracted = {}
    for key, prec, own in runs:
        sess = s32 if prec == "fp32" else runner(prec, fp32_path, int8_path, args.threads)
        if prec not in extracted:
            extracted[prec] = featurize(sess, test, hw, grid, True)
        f, _, masks = extracted[prec]
        sc_used = scorer_from(sess, prec)[0] if own else scorer
        sc, maps = {m: [] for m in MODES_MEASURED}, {m: [] for m in MODES_MEASURED}
        for i in range(0, len(f), 4):
            r = sc_used.score(f[i : i + 4], map_modes=MODES_MEASURED, modes=MODES_MEASURED)
            for m in sc:
                sc[m].append(r.scores[m])
                maps[m].append(r.maps[m].astype(np.float32))
        res[key] = {
            "features": f,
            "masks": masks,
            "scores": {m: np.concatenate(v) for m, v in sc.items()},
            "maps": {m: np.concatenate(v) for m, v in maps.items()},
        }
    masks = res["fp32"]["masks"].astype(bool)
    for v in [k for k, _, _ in runs[1:]]:
        cos = cosine_rows(
            res[v]["features"].reshape(-1, d).astype(np.float64),
            res["fp32"]["features"].reshape(-1, d).astype(np.float64),
        )
        ent_v = {"patch_cosine_mean": float(cos.mean()), "patch_cosine_p01": float(np.quantile(cos, 0.01))}
        for m in MODES_MEASURED:
            a, b = res["fp32"]["scores"][m], res[v]["scores"][m]
            ent = {
                "rank_correlation": spearman(b, a),
                "image_auroc_fp32": auroc(a, labels),
                f"image_auroc_{v}": auroc(b, labels),
            }
            if masks.any():
                ent["pixel_auroc_fp32"] = auroc(res["fp32"]["maps"][m].ravel(), masks.ravel())
                ent[f"pixel_auroc_{v}"] = auroc(res[v]["maps"][m].ravel(), masks.ravel())
            ent_v[m] = {k: round(float(x), 4) for k, x in ent.items()}
            log(f"{name} {v} {m}: {ent_v[m]}")
        out[v] = ent_v
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--variants", default="bf16,int8", help="comma list of int8, bf16")
    ap.add_argument("--train", type=int, default=40, help="normal training images for the bank (defective: a quarter)")
    ap.add_argument("--test", type=int, default=80, help="test images (half defective when possible)")
    ap.add_argument("--calibration", type=int, default=16)
    ap.add_argument(
        "--own-banks",
        action="store_true",
        help="also score each variant against banks built from its own features (as deployed)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed-reps", type=int, default=3)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--workdir", default="runs/i11")
    ap.add_argument("--fp32-onnx", default=None, help="an fp32 export of the same weights to reuse")
    ap.add_argument("--out", default="runs/i11/precision.json")
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
    record = BenchResult(
        "bench_precision", params_of(args), {"threads": args.threads, "weights": args.weights, "datasets": []}
    )
    report = record.metrics
    for ds in args.datasets.split(","):
        report["datasets"].append(run_dataset(ds, fp32_path, info, args, log))
    first = os.path.basename(os.path.normpath(args.datasets.split(",")[0]))
    int8_path = os.path.join(args.workdir, f"{first}-int8.onnx")
    sp = {}
    variants = [] if args.skip_speed else args.variants.split(",")
    for prec in (["fp32"] if variants else []) + variants:  # speed: all variants one after the other, this process
        sess = runner(prec, fp32_path, int8_path, args.threads)
        for b in (1, 8):
            sp[f"{prec}_batch{b}_ms_per_image"] = round(speed(sess, (632, 224), b, args.speed_reps), 1)
    for v in variants:
        for b in (1, 8):
            sp[f"{v}_speedup_batch{b}"] = round(sp[f"fp32_batch{b}_ms_per_image"] / sp[f"{v}_batch{b}_ms_per_image"], 2)
    report["speed"] = sp
    log(f"speed: {sp}")
    record.save(args.out, indent=2)
    print(record.dumps(indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
